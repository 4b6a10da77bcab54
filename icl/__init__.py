"""icl: transformers trained on in-context linear regression, and the algorithms they learn.

The library behind icl-book. Submodules are imported explicitly (``from icl import tasks``);
importing ``icl`` itself does no work.
"""

__version__ = "0.1.0"

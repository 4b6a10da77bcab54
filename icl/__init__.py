"""icl: transformers trained on in-context linear regression, and the algorithms they learn.

The library behind icl-book. Submodules are imported explicitly (``from icl import tasks``);
importing ``icl`` itself does no work beyond noting the time (chapters report their run time from it).
"""

import time as _time

__version__ = "0.1.0"
IMPORTED_AT = _time.perf_counter()  # when icl was first imported in this process

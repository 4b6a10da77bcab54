"""One module per chapter claim: ``config -> result``, cached in :mod:`icl.store`.

The same numbers come out of the chapter, ``python -m icl run`` and the tests, because all three
call these functions.
"""

"""``python -m icl``: see :mod:`icl.cli`."""

from icl.cli import main

raise SystemExit(main())

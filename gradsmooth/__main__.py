"""``python -m gradsmooth``: the same as the ``gradsmooth`` command."""

from .cli import main

raise SystemExit(main())

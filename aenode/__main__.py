"""Allow ``python -m aenode`` as well as the ``aenode`` console script."""

from aenode.cli import main

raise SystemExit(main())

"""`python -m aenode.phantom ...` (same options as `aenode phantom`)."""
import sys

from .cli import main

sys.exit(main())

"""``python -m pan_utils``: see pan_utils.cli."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

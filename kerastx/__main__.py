"""`python -m kerastx VERB ...`: see kerastx.cli."""

import sys

from kerastx.cli import main

if __name__ == "__main__":
    sys.exit(main())

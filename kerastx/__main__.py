"""`python -m kerastx VERB ...`: see kerastx.cli."""

import sys

from kerastx.cli import main

sys.exit(main())

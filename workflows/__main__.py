"""`python -m workflows ...` = `sentimentops render|run|pipeline|check ...`."""

import sys

from workflows.cli import main

sys.exit(main())

"""`python -m sentimentops.workflows ...` = `sentimentops render|run|pipeline|check ...`."""

import sys

from sentimentops.workflows.cli import main

sys.exit(main())

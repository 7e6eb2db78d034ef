"""``python -m sparsecore`` runs the console script."""

import sys

from sparsecore.cli import main

sys.exit(main())

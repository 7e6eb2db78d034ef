"""Makes ``nm_helpers`` importable from the tests (the suite runs with ``--import-mode=importlib``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

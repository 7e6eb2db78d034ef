import sys
from pathlib import Path

# Shared helpers of these tests (pytest runs with --import-mode=importlib).
sys.path.insert(0, str(Path(__file__).parent))

"""The scripts of this question import each other by module name (``import retrieval_depth``)."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

"""Test-suite setup: make both `tests.<helper>` and bare `<helper>` imports of test helpers work."""

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent
for p in (str(_TESTS.parent), str(_TESTS)):
    if p not in sys.path:
        sys.path.insert(0, p)

"""Test-suite setup: make both `tests.<helper>` and bare `<helper>` imports of test helpers work."""

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent
for p in (str(_TESTS.parent), str(_TESTS)):
    if p not in sys.path:
        sys.path.insert(0, p)

# Property tests run the same examples every time (a failure reproduces; CI never flakes on a newly drawn
# case) and without per-example deadlines (shared machines are slow at random moments).
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("hostproxy", derandomize=True, deadline=None, print_blob=True)
_hypothesis_settings.load_profile("hostproxy")

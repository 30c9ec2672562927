"""Where the project's shared material is: ``../shared`` beside the checkout (as CI lays it out), else the
workplace copy. Tests that read the spec or the Linkerd compat corpus use these paths."""

from __future__ import annotations

from pathlib import Path

_beside = Path(__file__).resolve().parents[2] / "shared"
SHARED = _beside if (_beside / "compat").is_dir() else Path("/work/shared")
COMPAT = SHARED / "compat" / "linkerd-examples"
SPEC = SHARED / "spec"

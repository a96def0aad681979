"""Finds the packages the plugin needs, installed beside it or in a development checkout.

The installer copies ``protocol`` into the plugin (``instantstyle/protocol``) and
vendors the pure-Python ``websockets`` package into ``instantstyle/vendor``:
Krita's Python has neither. In a development checkout both come from the
repository and the virtual environment instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

_VENDOR = Path(__file__).resolve().parent / "vendor"
if _VENDOR.is_dir() and str(_VENDOR) not in sys.path:
    # Appended, not prepended: a websockets that Krita (or another plugin) already has wins.
    sys.path.append(str(_VENDOR))

try:
    from . import protocol  # the installed plugin's own copy
except ImportError:  # a development checkout: the repository root is on sys.path
    import protocol  # type: ignore[no-redef]

__all__ = ["protocol"]

"""Warnings said once per process at WARNING, then at DEBUG.

Why one place: the conditions they tell of (a collector's body cap, a
redirect, a long ``Retry-After``, records or metrics that cannot go) come
back at every flush, and a line each time filled the app's log. Each used to
keep a flag of its own, spelled out five times.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("reqtelemetry")

#: The keys of the warnings said in this process so far.
_said: set[str] = set()


def warn_once(key: str, message: str, *args: Any) -> None:
    """Log ``message % args`` at WARNING the first time ``key`` is said in
    this process, at DEBUG every time after."""
    level = logging.DEBUG if key in _said else logging.WARNING
    _said.add(key)
    logger.log(level, message, *args)

"""Storage failures in the log: a few lines per outage, not a few per request.

Why: while the database is down every report, every refusal write and every
dashboard read fails the same way, and a traceback for each (some 40 lines)
buried the log and the one line that said what happened. An outage now
logs its first failure with its traceback, then at most one line per
interval saying how many more failed, and one line when storage works again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger("reqtelemetry.collector")

#: Seconds between two lines about the same outage.
LOG_EVERY = 60.0


@dataclass
class _Outage:
    began: float
    failures: int = 1
    #: Failures not yet said in a line.
    unsaid: int = 0
    said_at: float = 0.0
    #: Whether its first failure was logged (and its end is worth a line).
    announced: bool = True


class FailureLog:
    """Says storage failures once, then counts them; thread-safe.

    ``every``: seconds between two lines about one outage; ``clock``: a
    monotonic clock (tests give their own).
    """

    def __init__(
        self, every: float = LOG_EVERY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.every = every
        self._clock = clock
        self._lock = threading.Lock()
        self._outage: _Outage | None = None
        #: Until when a new outage is not announced: one that starts within
        #: ``every`` of the last announcement (intermittent failures, each
        #: followed by a success) is counted, not told again with a traceback.
        self._quiet_until = float("-inf")
        #: Failures of outages that ended unannounced: said with the next line.
        self._untold = 0

    def failed(self, what: str, error: BaseException) -> None:
        """``what`` (``"store a report"``) failed with ``error``: said with its
        traceback if it is the first failure since storage last worked, in a
        line with the count since the last line once ``every`` has passed,
        else only counted."""
        now = self._clock()
        first, due, elapsed, earlier = False, 0, 0.0, 0
        with self._lock:
            outage = self._outage
            if outage is None:
                first = now >= self._quiet_until
                earlier, self._untold = self._untold, 0
                if first:
                    self._quiet_until = now + self.every
                self._outage = _Outage(
                    began=now, said_at=now, unsaid=0 if first else 1 + earlier, announced=first
                )
            else:
                outage.failures += 1
                outage.unsaid += 1
                if now - outage.said_at >= self.every:
                    due, elapsed = outage.unsaid, now - outage.said_at
                    outage.unsaid, outage.said_at = 0, now
        if first:
            logger.error(
                "could not %s; further storage failures are counted, one line per %.0f s%s",
                what,
                self.every,
                f" ({earlier} more since the last line, each soon followed by a success)"
                if earlier
                else "",
                exc_info=error,
            )
        elif due:
            logger.error(
                "storage still failing: %d more failures in %.0f s (the last: could not %s: %s)",
                due,
                elapsed,
                what,
                _one_line(error),
            )

    def worked(self) -> None:
        """A storage call succeeded: the end of an outage, if there was one."""
        if self._outage is None:  # the common case, without the lock
            return
        with self._lock:
            outage, self._outage = self._outage, None
            if outage is not None and not outage.announced:
                self._untold += outage.unsaid
        if outage is not None and outage.announced:
            logger.info(
                "storage works again, after %d failures in %.0f s",
                outage.failures,
                self._clock() - outage.began,
            )


def _one_line(error: BaseException) -> str:
    """``error`` as one short line (a driver's message may span several)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:200] + "..."

"""What this collector process has already answered for a stamp, and answers again.

Why: a stamp is work paid once, and the report it binds can be sent again and
again for as long as the stamp is fresh (its window, some 12 minutes). Each
copy cost the collector the full reading of its payload (check 10: parse and
schema, up to a second of CPU for a large one) before storage refused the
replay (``409``), or refused the same payload for the same fault (``422``):
one stamp bought unlimited verifications, and a handful of senders kept the
collector too busy to store honest reports. A stamp this process stored, or
refused for its payload, is answered as before once its stamp holds (checks 1
to 9, cheap), without reading the payload again.

Only final answers are remembered: a ``503`` (busy, too slow, storage down)
invites the very same stamp again, and gets its full turn. Each replica
remembers what it answered; the storage's unique index still decides for all.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from .verify import Refusal

#: Stamps remembered at most, per process: about 500 bytes each with a
#: refusal's words (measured with tracemalloc), some 45 MB at most.
MAX_REMEMBERED = 65_536
#: A ``409``'s detail: the client counts the report as delivered (a retry of a
#: report that was stored, its answer lost).
REPLAY_DETAIL = "this stamp was stored before; mint a new one for a new report"


class StampOutcomes:
    """The stamps this process stored (``409 replay`` next time) or refused
    for their payload (the same refusal), each until its stamp could no
    longer be sent fresh; the oldest forgotten first past
    :data:`MAX_REMEMBERED`. Thread-safe: verification runs in a thread pool.
    """

    def __init__(self, window: float, limit: int = MAX_REMEMBERED) -> None:
        #: Seconds a stamp stays fresh: past that, it is refused for its date
        #: (cheaply) before its payload is read anyway.
        self.window = window
        self.limit = limit
        #: stamp -> (until, None for stored, else the refusal's reason, detail, status)
        self._outcomes: OrderedDict[str, tuple[float, tuple[str, str, int] | None]] = OrderedDict()
        self._lock = threading.Lock()

    def stored(self, stamp: str) -> None:
        """``stamp``'s report is stored: a copy is a replay."""
        self._remember(stamp, None)

    def refused(self, stamp: str, refusal: Refusal) -> None:
        """``stamp``'s payload was refused: a copy gets ``refusal`` again.

        Its words are kept, not the exception: that holds its traceback, whose
        frames hold the report's body and parsed payload (3.7 MB a refusal of
        a large report, kept for the stamp's 12 minutes)."""
        self._remember(stamp, (refusal.reason, refusal.detail, refusal.status))

    def answer(self, stamp: str) -> Refusal | None:
        """The refusal for a stamp already answered (``409 replay`` if its
        report was stored); None for a stamp this process has not answered."""
        now = time.monotonic()
        with self._lock:
            found = self._outcomes.get(stamp)
            if found is None:
                return None
            until, refusal = found
            if now > until:
                del self._outcomes[stamp]
                return None
        if refusal is None:
            return Refusal("replay", REPLAY_DETAIL)
        return Refusal(*refusal)

    def _remember(self, stamp: str, refusal: tuple[str, str, int] | None) -> None:
        now = time.monotonic()
        until = now + self.window
        with self._lock:
            self._outcomes[stamp] = (until, refusal)
            self._outcomes.move_to_end(stamp)
            # Oldest first (one window for all): those past it go now. Why:
            # forgotten only when looked up again, a collector that ran for
            # weeks held MAX_REMEMBERED stale stamps (some 20 MB) for good.
            while next(iter(self._outcomes.values()))[0] < now:
                self._outcomes.popitem(last=False)
            while len(self._outcomes) > self.limit:
                self._outcomes.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._outcomes)

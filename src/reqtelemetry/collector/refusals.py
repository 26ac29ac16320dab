"""Refusals counted in memory, and written to the database now and then.

Why not one database write per refusal: a refusal costs its sender nothing
(no token, no proof of work: ``"not json"`` will do), and an upsert for
each made every garbage request take a pool connection and a worker thread
from the real reports, and, while the database was down, log a traceback.
Counting is now an addition under a lock; the counts go to the database in
one transaction every few seconds and at shutdown (:class:`RefusalWriter`).
Each replica adds its own counts to the shared counters (an upsert that
adds), so replicas still add up.

What the dashboard shows is the stored counts (every replica's) plus this
replica's counts not yet written (:meth:`RefusalTally.counts`), so nothing
it shows is late. The counts are diagnostics, written at least once: where
a write's commit lands and its answer is lost, the batch is written again
and counted twice (an idempotent write would need a batch id per replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool

from .storage.base import Storage

logger = logging.getLogger("reqtelemetry.collector")

#: Seconds between two writes of the counts.
WRITE_EVERY = 10.0


class RefusalTally:
    """This collector's refusal counts not yet in the database; thread-safe.

    It holds one counter per reason, and reasons are the collector's own
    words (``verify.STATUS``), so it stays a dozen entries however many
    requests are refused.
    """

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._lock = threading.Lock()  # guards _unwritten
        # Held across a write and across a read of stored + unwritten, so a
        # read never sees counts both in the database and here, nor in neither.
        self._writing = threading.Lock()
        self._unwritten: Counter[str] = Counter()

    def add(self, reason: str) -> None:
        """Count one refusal for ``reason`` (no database involved)."""
        with self._lock:
            self._unwritten[reason] += 1

    def unwritten(self) -> dict[str, int]:
        """The counts not yet written, by reason."""
        with self._lock:
            return dict(sorted(self._unwritten.items()))

    def write(self, deadline: float | None = None) -> int:
        """Write the counts not yet written, in one transaction; how many were written.

        On any failure (``deadline`` passed, the database is down) they are
        kept, added to what is counted meanwhile, for the next write.
        """
        with self._writing:
            with self._lock:
                counts, self._unwritten = self._unwritten, Counter()
            if not counts:
                return 0
            try:
                self._storage.add_refusals(counts, deadline=deadline)
            except BaseException:
                with self._lock:
                    self._unwritten.update(counts)
                raise
            return sum(counts.values())

    def counts(self) -> dict[str, int]:
        """Every refusal counted: the stored counters plus those not yet written."""
        with self._writing:
            total = Counter(self._storage.refusals())
            with self._lock:
                total.update(self._unwritten)
        return dict(sorted(total.items()))


class RefusalWriter:
    """Writes a :class:`RefusalTally` every ``every`` seconds, and once more at stop.

    Each write must commit within ``budget`` seconds (a database held up
    must not hold the dashboard's reads, which wait for a write under way).
    ``on_written(count)`` and ``on_failed(error)`` say how each write went
    (written counts only: a write of nothing tells nothing about the database).
    """

    def __init__(
        self,
        tally: RefusalTally,
        every: float,
        budget: float,
        on_written: Callable[[int], None],
        on_failed: Callable[[BaseException], None],
    ) -> None:
        self.tally = tally
        self.every = every
        self.budget = budget
        self._on_written = on_written
        self._on_failed = on_failed
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """End the periodic writes, then write what is left (a replica shutting
        down must not take its counts with it)."""
        self._stop.set()
        if self._task is not None:
            await self._task
        await self.write_once()
        left = self.tally.unwritten()
        if left:
            logger.error("refusal counts not written, lost at shutdown: %s", left)

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.every)
            if not self._stop.is_set():
                await self.write_once()

    async def write_once(self) -> None:
        try:
            written = await run_in_threadpool(self.tally.write, time.monotonic() + self.budget)
        except Exception as error:
            self._on_failed(error)
            return
        if written:
            self._on_written(written)

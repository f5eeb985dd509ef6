"""etcd's auto-compaction policy (``--auto-compaction-mode`` / ``-retention``), clock-injected.

Pure: no threads, no clock, no I/O. The member calls ``due(now, current_revision)``
on every tick (leader or not, with a monotonic clock), proposes a Compaction
for any revision it returns, and reports the outcome with ``result``. It calls
``pause()`` when it is not the leader and ``resume(now)`` when it becomes one;
a new compactor starts paused (etcd's run loop pauses its compactor on the
first Ready of a member that is not leader). ``pause`` abandons an attempt
still in flight, so a proposal dropped by a leader change cannot wedge it.

The rules are those of etcd's ``server/etcdserver/api/v3compactor`` (3.5):

periodic, retention R (a duration; a bare integer is hours):
    compact interval C = min(R, 1h); check ("retry") interval I = C / 10.
    At every check the current revision is sampled into a window of the last
    R/I + 1 samples, so its oldest entry is the revision of (about) R ago.
    The first compaction waits a full R after start; later ones come C after
    the last success, each compacting to the window's oldest sample. A
    failed attempt is retried at the next check (I later) with the window
    moved on. Pausing only suppresses compaction: sampling goes on, and on
    resume a compaction that is due happens at the next check.

revision, retention R (a revision count):
    every 5 minutes compact to ``current_revision - R`` if that is positive
    and differs from the last successful compaction (a failure is retried
    5 minutes later).

``"0"`` (or any zero duration) disables auto compaction, as in etcd. A
compacted-already error counts as success (etcd treats ``ErrCompacted`` so).
As in etcd 3.6 (etcd-io/etcd#13829) the periodic mode also skips a revision
it already compacted; here neither mode ever returns a revision at or below
the last successful one, so an idle store is not compacted again and again.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Final

from cluster.config import ConfigError, validate_retention

PERIODIC: Final = "periodic"
REVISION: Final = "revision"

NS_PER_S: Final = 1_000_000_000
HOUR_NS: Final = 3600 * NS_PER_S
RETRY_DIVISOR: Final = 10  # etcd periodic.go: retryDivisor
REVISION_INTERVAL: Final = 300.0  # etcd revision.go: revInterval = 5 * time.Minute

_UNIT_NS: Final = {"ms": 1_000_000, "s": NS_PER_S, "m": 60 * NS_PER_S, "h": HOUR_NS}
_RETENTION = re.compile(r"([0-9]+)(ms|s|m|h)?")


def parse_retention(mode: str, retention: str) -> int:
    """The retention as etcd reads it: nanoseconds for periodic, a revision count for revision.

    A bare integer is hours in periodic mode (etcd's ``parseCompactionRetention``).
    Raises ``ConfigError`` (a ``ValueError``) with the flag's name on bad input.
    """
    if mode not in (PERIODIC, REVISION):
        raise ConfigError(f"--auto-compaction-mode: {mode!r} must be 'periodic' or 'revision'")
    validate_retention(mode, retention)
    m = _RETENTION.fullmatch(retention)
    if m is None or (mode == REVISION and m.group(2)):
        # validate_retention accepts non-ASCII digits (str.isdigit); refuse them here.
        raise ConfigError(
            f"--auto-compaction-retention: {retention!r} is not a valid {mode} retention"
        )
    count, unit = int(m.group(1)), m.group(2)
    if mode == REVISION:
        return count
    return count * _UNIT_NS[unit or "h"]


class AutoCompactor:
    """Decides when the leader proposes an automatic compaction, and to which revision."""

    def __init__(self, mode: str, retention: str) -> None:
        """Raises ``ConfigError`` (a ``ValueError``) for an unknown mode or a bad retention."""
        self.mode = mode
        #: nanoseconds (periodic) or a revision count (revision); 0 disables
        self.retention = parse_retention(mode, retention)
        #: seconds between checks: etcd's retry interval (periodic) or revInterval (revision)
        self.check_interval = REVISION_INTERVAL
        #: seconds between successful periodic compactions, once the first has happened
        self.compact_interval = REVISION_INTERVAL
        #: how many periodic samples are kept (etcd's getRetentions)
        self.window = 0
        self._period = REVISION_INTERVAL
        if mode == PERIODIC and self.retention:
            compact_ns = min(self.retention, HOUR_NS)  # etcd's getCompactInterval
            retry_ns = compact_ns // RETRY_DIVISOR  # etcd's getRetryInterval
            self.check_interval = retry_ns / NS_PER_S
            self.compact_interval = compact_ns / NS_PER_S
            self.window = self.retention // retry_ns + 1
            self._period = self.retention / NS_PER_S
        self._revs: deque[int] = deque(maxlen=max(self.window, 1))
        self._paused = True  # until the member says it leads (etcd pauses on its first Ready)
        self._started = False
        self._next_check: float | None = None  # None: (re)arm the timer at the next due()
        self._sample_pending = False
        self._last_success = 0.0
        self._base_interval = self._period  # the first compaction waits a full retention
        self._in_flight: int | None = None
        self._last_compacted = 0

    @property
    def enabled(self) -> bool:
        """False for a zero retention: etcd creates no compactor then."""
        return self.retention > 0

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def in_flight(self) -> int | None:
        """The revision ``due`` returned whose ``result`` has not come back yet."""
        return self._in_flight

    @property
    def last_compacted(self) -> int:
        """The highest revision reported compacted (0 before any)."""
        return self._last_compacted

    @property
    def samples(self) -> tuple[int, ...]:
        """Periodic mode's window of sampled revisions, oldest first."""
        return tuple(self._revs)

    def pause(self) -> None:
        """Not the leader: attempt nothing. An attempt in flight is abandoned as failed."""
        self._paused = True
        if self._in_flight is not None:
            self._in_flight = None
            self._after_attempt(None)

    def resume(self, now: float) -> None:
        """Leader again. Like etcd, the sampled window and the last success are kept."""
        self._paused = False
        self._start(now)

    def due(self, now: float, current_revision: int) -> int | None:
        """The revision to compact to now, or None. Call on every tick, leader or not."""
        if not self.enabled or self._in_flight is not None:
            return None
        if not self._started:
            self._start(now)
        if self._sample_pending:
            self._sample(current_revision)
        if self._next_check is None:
            self._next_check = now + self.check_interval
        if now < self._next_check:
            return None
        rev = self._candidate(now, current_revision)
        if rev is None:
            # etcd's loop: sample, then wait one interval for the next check.
            self._sample(current_revision)
            self._next_check = now + self.check_interval
            return None
        if self.mode == PERIODIC and self._base_interval == self._period:
            self._base_interval = self.compact_interval  # after the first attempt, every C
        self._in_flight = rev
        return rev

    def result(self, revision: int, ok: bool, now: float) -> None:
        """Report an attempt's outcome; an already-compacted error counts as ``ok``.

        A result for a revision that is not in flight (say, abandoned by ``pause``)
        only records a success, so that revision is not proposed again.
        """
        if ok:
            self._last_compacted = max(self._last_compacted, revision)
        if revision != self._in_flight:
            return
        self._in_flight = None
        if ok:
            self._last_success = now
        self._after_attempt(now)

    def _start(self, now: float) -> None:
        if self._started:
            return
        self._started = True
        self._last_success = now  # etcd: lastSuccess := clock.Now() when Run starts
        self._next_check = now + self.check_interval
        self._sample_pending = True

    def _after_attempt(self, now: float | None) -> None:
        # etcd samples right after Compact returns, then waits one interval.
        self._sample_pending = True
        self._next_check = None if now is None else now + self.check_interval

    def _sample(self, current_revision: int) -> None:
        self._sample_pending = False
        if self.mode == PERIODIC:
            self._revs.append(current_revision)  # maxlen drops the oldest past the window

    def _candidate(self, now: float, current_revision: int) -> int | None:
        if self._paused:
            return None
        if self.mode == PERIODIC:
            if now - self._last_success < self._base_interval or not self._revs:
                return None
            rev = self._revs[0]
        else:
            rev = current_revision - self.retention
        if rev <= 0 or rev <= self._last_compacted:
            return None
        return rev

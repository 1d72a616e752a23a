"""How often the kernel backend lists conntrack to see use (pure: the caller gives the times).

A tenant decides how many DNATed connections exist (up to `nf_conntrack_max`), and a
listing plus its parse costs time in proportion to them (about 0.18 s for 20,000). So
the listing does not run every poll round regardless: after each one, the next waits
`max(poll interval, cost / share)`, rounded up to whole poll rounds, so listing and
parse take at most `share` of one core (10 %), whatever the tenant does. The poll round
itself (retries, counters, Closest re-planning) keeps its pace.

While the listing is slower than the poll rounds, use is seen late: a service used just
after a listing is only reported at the next one. `lag(now)` says by how much, so the
idle rule measures idleness up to the last listing instead of up to now (see
`Interests.expired`): a used service is never dropped early, only up to one interval
late. At the poll pace the lag is 0 and the rule is as before. A listing under way or
one that failed has not seen the use since the last good one either: the lag runs on from
that one (for at most `BLIND_GRACE`: a listing runs up to its timeout, and failures are
logged and counted). The interval is capped at `MAX_INTERVAL`, so use is seen at most
about that plus twice a listing's time late; beyond 3 s per listing (some 300,000
connections) the listing then takes more than its share.
"""

from __future__ import annotations

import math

SHARE = 0.10  # of one core, for listing + parse
MAX_INTERVAL = 30.0  # seconds between listings at most
BLIND_GRACE = 60.0  # seconds the lag runs on while listings fail


class ListingPace:
    """Which poll rounds list conntrack; `interval` and the counters are for status."""

    def __init__(self, poll_interval: float, share: float = SHARE) -> None:
        if not poll_interval > 0:
            raise ValueError(f"poll interval must be > 0 seconds, got {poll_interval!r}")
        if not 0 < share <= 1:
            raise ValueError(f"listing share must be in (0, 1], got {share!r}")
        self.poll_interval = float(poll_interval)
        self.share = float(share)
        self.interval = self.poll_interval  # planned seconds from one listing to the next
        self.cost = 0.0  # seconds the last listing and its parse took
        self.listings = 0
        self.rounds_skipped = 0
        self._skip = 0  # poll rounds left before the next listing
        self._listed_at: float | None = None  # when the last good listing began
        self._listing = False  # one has begun and not ended yet
        self._failing = False  # the last one failed
        self.failures = 0

    def due(self) -> bool:
        """Whether this poll round lists (call once per round)."""
        if self._skip > 0:
            self._skip -= 1
            self.rounds_skipped += 1
            return False
        return True

    def begin(self) -> None:
        """A listing begins: until it ends, the use since the last one is not seen."""
        self._listing = True

    def listed(self, started: float, cost: float) -> None:
        """A listing began at `started` and took `cost` seconds, parse included."""
        self._pace(cost)
        self.listings += 1
        # lag() reads these from another thread: each step leaves a consistent view
        self._listed_at = started
        self._failing = False
        self._listing = False

    def failed(self, cost: float) -> None:
        """The listing that began took `cost` seconds and saw nothing: paced like any other
        (it cost as much), and the use since the last good one stays unseen."""
        self._pace(cost)
        self.failures += 1
        self._failing = True  # before the listing ends: lag() never sees neither
        self._listing = False

    def _pace(self, cost: float) -> None:
        cost = max(0.0, cost)
        self.cost = cost
        self.interval = max(self.poll_interval, min(cost / self.share, MAX_INTERVAL))
        # 1e-9: 0.3 / 0.1 / 1.0 is 2.9999999999999996 rounds, not 3
        rounds = max(1, math.ceil(self.interval / self.poll_interval - 1e-9))
        self._skip = rounds - 1

    def nothing_to_list(self) -> None:
        """The kernel serves nothing (or use cannot be read): a later listing runs at once."""
        self._skip = 0

    def lag(self, now: float) -> float:
        """Seconds of use not looked at yet beyond the poll pace: 0 at the poll pace, else
        the time since the last good listing began; 0 again once the next listing is
        overdue by a whole interval (nothing is listed any more: nothing served, or the
        poll thread stuck), or, while a listing runs or after it failed, after
        `BLIND_GRACE`, so no interest is kept for ever."""
        listed_at = self._listed_at
        if listed_at is None:
            return 0.0
        elapsed = max(0.0, now - listed_at)
        if self._failing or self._listing:  # a listing may run up to its timeout
            return elapsed if elapsed < BLIND_GRACE else 0.0
        if self.interval <= self.poll_interval:
            return 0.0
        if elapsed >= 2 * self.interval + self.poll_interval:
            return 0.0
        return elapsed

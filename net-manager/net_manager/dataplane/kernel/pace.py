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
late. At the poll pace the lag is 0 and the rule is as before.
"""

from __future__ import annotations

import math

SHARE = 0.10  # of one core, for listing + parse


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
        self._listed_at: float | None = None  # when the last listing began

    def due(self) -> bool:
        """Whether this poll round lists (call once per round)."""
        if self._skip > 0:
            self._skip -= 1
            self.rounds_skipped += 1
            return False
        return True

    def listed(self, started: float, cost: float) -> None:
        """A listing began at `started` and took `cost` seconds (parse included; failed
        ones too: they cost as well)."""
        cost = max(0.0, cost)
        self.cost = cost
        self.listings += 1
        self._listed_at = started
        self.interval = max(self.poll_interval, cost / self.share)
        # 1e-9: 0.3 / 0.1 / 1.0 is 2.9999999999999996 rounds, not 3
        rounds = max(1, math.ceil(self.interval / self.poll_interval - 1e-9))
        self._skip = rounds - 1

    def nothing_to_list(self) -> None:
        """The kernel serves nothing (or use cannot be read): a later listing runs at once."""
        self._skip = 0

    def lag(self, now: float) -> float:
        """Seconds of use not looked at yet beyond the poll pace: 0 at the poll pace, else
        the time since the last listing began; 0 again once the next listing is overdue by
        a whole interval (nothing is listed any more: nothing served, or the poll thread
        stuck), so no interest is kept for ever."""
        if self._listed_at is None or self.interval <= self.poll_interval:
            return 0.0
        elapsed = now - self._listed_at
        if elapsed >= 2 * self.interval + self.poll_interval:
            return 0.0
        return max(0.0, elapsed)

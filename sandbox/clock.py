"""A controllable UTC clock shared by the sandbox and the code under test."""

import threading
import time
from datetime import UTC, datetime, timedelta


def _aware_utc(dt: datetime) -> datetime:
    """Return dt in UTC; reject naive datetimes, whose zone would be a guess."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"SandboxClock needs a timezone-aware datetime, got naive {dt.isoformat()}")
    return dt.astimezone(UTC)


class SandboxClock:
    """Thread-safe clock that moves when told to; calling it returns now().

    Frozen by default (tests and the demo step it). With ticking=True it also follows real time,
    so a long-running `vifgate sandbox` sees confirmed VIFs come up by themselves.
    """

    def __init__(self, start: datetime | None = None, *, ticking: bool = False) -> None:
        self._lock = threading.Lock()
        self._now = _aware_utc(start) if start is not None else datetime.now(UTC)
        self._ticking = ticking
        self._since = time.monotonic()

    def now(self) -> datetime:
        """Current sandbox time (UTC-aware)."""
        with self._lock:
            return self._now + self._elapsed()

    def advance(self, delta: timedelta) -> datetime:
        """Move the clock by delta and return the new time."""
        with self._lock:
            self._now += delta
            return self._now + self._elapsed()

    def set(self, dt: datetime) -> None:
        """Jump to dt (must be timezone-aware)."""
        moved_to = _aware_utc(dt)
        with self._lock:
            self._now = moved_to
            self._since = time.monotonic()

    def _elapsed(self) -> timedelta:
        return timedelta(seconds=time.monotonic() - self._since) if self._ticking else timedelta(0)

    def __call__(self) -> datetime:
        return self.now()

    def __repr__(self) -> str:
        return f"SandboxClock({self.now().isoformat()})"

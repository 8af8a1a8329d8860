"""A controllable UTC clock shared by the sandbox and the code under test."""

import threading
from datetime import UTC, datetime, timedelta


def _aware_utc(dt: datetime) -> datetime:
    """Return dt in UTC; reject naive datetimes, whose zone would be a guess."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"SandboxClock needs a timezone-aware datetime, got naive {dt.isoformat()}")
    return dt.astimezone(UTC)


class SandboxClock:
    """Thread-safe clock that only moves when told to; calling it returns now()."""

    def __init__(self, start: datetime | None = None) -> None:
        self._lock = threading.Lock()
        self._now = _aware_utc(start) if start is not None else datetime.now(UTC)

    def now(self) -> datetime:
        """Current sandbox time (UTC-aware)."""
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        """Move the clock by delta and return the new time."""
        with self._lock:
            self._now += delta
            return self._now

    def set(self, dt: datetime) -> None:
        """Jump to dt (must be timezone-aware)."""
        moved_to = _aware_utc(dt)
        with self._lock:
            self._now = moved_to

    def __call__(self) -> datetime:
        return self.now()

    def __repr__(self) -> str:
        return f"SandboxClock({self.now().isoformat()})"

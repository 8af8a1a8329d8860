"""The sandbox's clock as `vifgate` reads it over HTTP (VIFGATE_CLOCK); never used by the Lambda."""

import json
import urllib.request
from datetime import datetime
from urllib.parse import urlsplit

from .clock import _aware_utc


class RemoteClock:
    """The time of a running sandbox, read over HTTP at each call: what `vifgate` uses under VIFGATE_CLOCK.

    Each call asks again, so `POST /_sandbox/clock {"advanceSeconds": N}` moves the CLI's deadlines too.
    """

    def __init__(self, url: str, timeout: float = 5) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ClockUnavailable(f"VIFGATE_CLOCK: {url!r} is not an http:// URL")
        self.url = url
        self._timeout = timeout

    def now(self) -> datetime:
        """The sandbox's time; ClockUnavailable names the URL when it cannot be had."""
        try:
            with urllib.request.urlopen(self.url, timeout=self._timeout) as answer:
                return _aware_utc(datetime.fromisoformat(json.load(answer)["now"]))
        except OSError as exc:  # refused, timed out, HTTP error status
            reason = getattr(exc, "reason", exc)  # URLError wraps the socket's error
            why = getattr(reason, "strerror", None) or str(reason)
        except (ValueError, KeyError, TypeError) as exc:
            why = f'the answer is not {{"now": an ISO time with offset}} ({type(exc).__name__})'
        raise ClockUnavailable(
            f"VIFGATE_CLOCK: cannot read the time from {self.url}: {why} "
            "(is `vifgate sandbox` still running? unset VIFGATE_CLOCK to use this machine's clock)"
        )

    def __call__(self) -> datetime:
        return self.now()


class ClockUnavailable(RuntimeError):
    """VIFGATE_CLOCK names no readable sandbox clock."""

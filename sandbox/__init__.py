"""Local DirectLink / AWS Direct Connect sandbox speaking the real wire protocol."""

from .clock import SandboxClock
from .directlink import DirectLinkSandbox
from .directlink_server import Faults
from .directlink_state import ApiError

__all__ = ["ApiError", "DirectLinkSandbox", "Faults", "SandboxClock"]

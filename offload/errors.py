"""Exceptions a user can cause. Each message says what to do; tracebacks are for our bugs."""

__all__ = ["OffloadError", "DeviceError", "KernelNotFound"]


class OffloadError(Exception):
    """Base of every error offload raises for a user's input or environment."""


class KernelNotFound(OffloadError, KeyError):
    """A kernel name or id that the registry does not have."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DeviceError(OffloadError):
    """A device could not be opened or a call could not run on it (and fallback is off)."""

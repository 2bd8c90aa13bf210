"""Exceptions a user can cause. Each message says what to do; tracebacks are for our bugs."""

from hdl.errors import OffloadError  # the root lives in the bottom layer; see its docstring

__all__ = ["OffloadError", "DeviceError", "KernelNotFound"]


class KernelNotFound(OffloadError, KeyError):
    """A kernel name or id that the registry does not have."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DeviceError(OffloadError):
    """A device could not be opened or a call could not run on it (and fallback is off)."""

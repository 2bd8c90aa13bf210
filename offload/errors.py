"""Exceptions a user can cause. Each message says what to do; tracebacks are for our bugs."""

from hdl.errors import OffloadError  # the root lives in the bottom layer; see its docstring

__all__ = ["OffloadError", "DeviceError", "KernelNotFound", "KernelError"]


class KernelNotFound(OffloadError, KeyError):
    """A kernel name or id that the registry does not have."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DeviceError(OffloadError):
    """A device could not be opened or a call could not run on it (and fallback is off)."""


class KernelError(OffloadError):
    """A kernel found its request malformed: a result of the call, the same on every device.

    Raised alike by the CPU path and by gateware that flagged the request; it never falls back
    to the CPU and never counts as a failure of the device.

    Attributes
    ----------
    kernel, operation : str
        Where it was raised.
    detail : str
        What was wrong with the request.
    """

    def __init__(self, kernel: str, operation: str, detail: str):
        super().__init__(f"{kernel}.{operation}: {detail}")
        self.kernel, self.operation, self.detail = kernel, operation, detail

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KernelError) and (self.kernel, self.operation, self.detail) \
            == (other.kernel, other.operation, other.detail)

    def __hash__(self) -> int:
        return hash((self.kernel, self.operation, self.detail))

"""offload: network-service functions in FPGA gateware, called from Python.

>>> import offload
>>> with offload.open("cpu") as dev:
...     dev.crc32c(b"123456789")
3808858755
"""

from .device import Device  # noqa: A001  (offload.open is the API)
from .device import open_device as open
from .errors import DeviceError, KernelError, KernelNotFound, OffloadError

__all__ = ["open", "Device", "OffloadError", "DeviceError", "KernelError", "KernelNotFound"]
__version__ = "0.1.0"

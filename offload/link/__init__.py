"""The host end of the offload link: frame codec, transports, and the driver."""

from .codec import Frame, FrameError, decode_frame, encode_frame
from .driver import LinkBackend, Manifest
from .transport import SerialTransport, Transport

__all__ = ["Frame", "FrameError", "decode_frame", "encode_frame", "LinkBackend", "Manifest",
           "SerialTransport", "Transport"]

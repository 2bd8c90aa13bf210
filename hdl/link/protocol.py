"""The offload link protocol, version 1: the constants both ends share.

One byte stream runs each way, the same over a board's UART and a virtual board's TCP socket.
Frames are COBS-encoded and each ends with one 0x00 byte. A decoded frame is::

    offset  size  field
    0       1     link version (LINK_VERSION)
    1       1     kernel id (0 is the system kernel)
    2       1     request: opcode; response: status
    3       1     flags (request: FLAG_MORE; response: FLAG_RESPONSE)
    4       2     sequence number, little-endian
    6       2     payload length, little-endian
    8       n     payload
    8+n     4     CRC-32C of bytes 0 .. 8+n-1, little-endian

Every response has FLAG_RESPONSE set, so that a line that echoes (a loopback, a terminal
program left in echo mode) is never taken for a device answering.

Rules the device keeps:

* A frame whose CRC is wrong, or that is shorter than a header and a CRC, is dropped and
  counted; it gets no answer (its sequence number cannot be trusted). The host retries.
* A half-received frame is dropped after a period of silence on the line.
* Frames to the system kernel (id 0) are stateless reads: they are answered at once, their
  sequence number echoed, and they do not take part in sequencing.
* Every other good frame is sequenced. The device expects sequence numbers in order, starting
  from the one the manifest reports. A frame with the expected number is executed and answered
  with exactly one response, which the device also keeps in a replay window of REPLAY_WINDOW
  slots; the expected number then advances. A frame whose number is among the last
  REPLAY_WINDOW executed gets the kept response again and is not executed twice. Any other
  number is answered with STATUS_OUT_OF_SEQUENCE, whose payload is the expected number
  (u16 LE), and is not executed: the host goes back and resends from there.
* A request with FLAG_MORE carries part of a kernel message: its payload is passed to the kernel
  without ending the message, and its response is an empty STATUS_OK. The response to the frame
  that ends the message carries the kernel's response.
* Every good frame to a kernel other than 0 is sequenced, whatever its status: an error
  response uses up its sequence number and is kept for replay like any other, so a host with
  frames in flight does not see every frame after an error answered OUT_OF_SEQUENCE.
* A kernel whose response would exceed the device's max_response is answered STATUS_TOO_LONG
  with an empty payload (the kernel has run). A kernel that makes no progress for the link's
  timeout is answered STATUS_KERNEL_ERROR with an empty payload.
* Errors that a good frame can earn: STATUS_BAD_FRAME (wrong version or a length field that
  disagrees with the frame), STATUS_UNKNOWN_KERNEL, STATUS_BAD_OPCODE, STATUS_TOO_LONG (payload
  over the device's max_payload; the frame is still checked and answered) and
  STATUS_KERNEL_ERROR (the kernel raised its error flag; the payload is its response).

System kernel opcodes:

* OP_MANIFEST: the payload is the expected sequence number (u16 LE) followed by the manifest
  as compact JSON (UTF-8): ``{"link": 1, "board": str, "clock_hz": int, "build": str,
  "max_payload": int, "max_response": int, "window": int,
  "kernels": [{"name": str, "id": int, "version": int, "params": {...}}, ...]}``.
* OP_COUNTERS: the payload is u32 LE counters: first the LINK_COUNTERS, then for each kernel in
  manifest order the KERNEL_COUNTERS.
"""

__all__ = [
    "LINK_VERSION", "HEADER_SIZE", "CRC_SIZE", "FLAG_MORE", "FLAG_RESPONSE", "REPLAY_WINDOW",
    "MAX_PAYLOAD", "MAX_RESPONSE", "SYSTEM_KERNEL_ID",
    "OP_CALL", "OP_MANIFEST", "OP_COUNTERS",
    "STATUS_OK", "STATUS_BAD_FRAME", "STATUS_UNKNOWN_KERNEL", "STATUS_KERNEL_ERROR",
    "STATUS_TOO_LONG", "STATUS_BAD_OPCODE", "STATUS_OUT_OF_SEQUENCE", "STATUS_NAMES",
    "LINK_COUNTERS", "KERNEL_COUNTERS",
]

LINK_VERSION = 1
HEADER_SIZE = 8
CRC_SIZE = 4
FLAG_MORE = 0x01
FLAG_RESPONSE = 0x80

#: Responses the device keeps for replay; the host keeps at most this many frames in flight.
REPLAY_WINDOW = 8
#: Default largest request payload a device takes in one frame.
MAX_PAYLOAD = 1024
#: Default largest kernel response a device sends in one frame (and keeps for replay).
MAX_RESPONSE = 64

SYSTEM_KERNEL_ID = 0

# Opcodes. Kernels other than the system kernel take OP_CALL.
OP_CALL = 0
OP_MANIFEST = 0
OP_COUNTERS = 1

# Response status.
STATUS_OK = 0
STATUS_BAD_FRAME = 1
STATUS_UNKNOWN_KERNEL = 2
STATUS_KERNEL_ERROR = 3
STATUS_TOO_LONG = 4
STATUS_BAD_OPCODE = 5
STATUS_OUT_OF_SEQUENCE = 6

STATUS_NAMES = {
    STATUS_OK: "ok",
    STATUS_BAD_FRAME: "bad frame",
    STATUS_UNKNOWN_KERNEL: "unknown kernel",
    STATUS_KERNEL_ERROR: "kernel error",
    STATUS_TOO_LONG: "too long",
    STATUS_BAD_OPCODE: "bad opcode",
    STATUS_OUT_OF_SEQUENCE: "out of sequence",
}

#: Link-wide counters, in the order OP_COUNTERS reports them.
LINK_COUNTERS = ("frames_in", "bad_crc", "timeouts", "replays", "out_of_sequence", "frames_out")
#: Counters kept for each kernel, in the order OP_COUNTERS reports them.
#: ``open_message`` is 1 while a kernel's message is open: a FLAG_MORE frame has been taken and
#: the frame that ends the message has not. A host that opens a device and finds one open (its
#: predecessor died mid-message) ends it with an empty final frame and drops the response, so
#: that its own first call is not appended to the stranger's bytes.
KERNEL_COUNTERS = ("busy_cycles", "beats_in", "beats_out", "errors", "open_message")

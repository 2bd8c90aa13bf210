"""The offload link protocol, version 2: the constants and rules both ends share.

One byte stream runs each way, the same over a board's UART and a virtual board's TCP socket.
Frames are COBS-encoded and each ends with one 0x00 byte. A decoded frame is::

    offset  size  field
    0       1     link version (LINK_VERSION)
    1       1     kernel id (0 is the system kernel)
    2       1     request: opcode; response: status
    3       1     flags (request: FLAG_MORE, FLAG_CONTINUE; response: FLAG_RESPONSE,
                  FLAG_MORE)
    4       4     sequence number, little-endian (32 bits)
    8       2     payload length, little-endian
    10      n     payload
    10+n    4     CRC-32C of bytes 0 .. 10+n-1, little-endian

Every response has FLAG_RESPONSE set, so that a line that echoes (a loopback, a terminal
program left in echo mode) is never taken for a device answering.

Over UDP (a board on Ethernet, ``udp://HOST:PORT``) a datagram already has a start and an end
and a checksum, so frames travel without COBS and without delimiters:

* A datagram holds one or more whole frames back to back, each as above before COBS (header,
  payload, CRC-32C), each frame's length field saying where the next begins. A frame never
  spans two datagrams, and a datagram holds at most MAX_DATAGRAM bytes (a 1500-byte Ethernet
  MTU less the IPv4 and UDP headers), so a frame's payload is at most MAX_DATAGRAM - HEADER_SIZE
  - CRC_SIZE bytes. Small frames share a datagram: the host packs every frame it has to send
  before it next waits for answers, and the device every response it has ready.
* A frame that does not fit what is left of its datagram (a length past the end, fewer bytes
  than a header and a CRC) ends the datagram: the frames before it are taken, it and the rest
  are dropped and counted as bad, as a bad CRC is.
* The device answers to the address and port the request came from. UDP may drop, duplicate
  and reorder datagrams; the rules below (sequence numbers, the replay window, the host's
  retries and resynchronisation) are what make that safe, as they do for a damaged UART.

Rules the device keeps:

* A frame whose CRC is wrong, or that is shorter than a header and a CRC, is dropped and
  counted; it gets no answer (its sequence number cannot be trusted). The host retries.
* A half-received frame is dropped after a period of silence on the line.
* Frames to the system kernel (id 0) do not take part in sequencing: they are answered at once,
  their sequence number (the host's nonce) echoed. OP_MANIFEST and OP_COUNTERS only read;
  OP_SYNC moves the expected sequence number forward (see below).
* Every other good frame is sequenced. The device expects sequence numbers in order, starting
  from the one the manifest reports. A frame with the expected number is executed and answered
  with exactly one response, which the device also keeps in a replay window of REPLAY_WINDOW
  slots; the expected number then advances. A frame whose number is among the last
  REPLAY_WINDOW executed (since the last OP_SYNC) gets the kept response again and is not
  executed twice. Any other number is answered with STATUS_OUT_OF_SEQUENCE, whose payload is
  the expected number (u32 LE), and is not executed: the host goes back and resends from there.
  Distances between numbers are taken modulo 2**32.
* The opcode of a frame to a kernel is one of the kernel's operations (0 to 127, as it declares
  them), or OP_RESET. An opcode the kernel does not declare is answered STATUS_BAD_OPCODE and
  nothing reaches the kernel. The opcode of a message's frames travels beside its bytes (the
  ``op`` field of the kernel's request stream); a message's frames all carry the same one.
* A request with FLAG_MORE carries part of a kernel message: its payload is passed to the kernel
  without ending the message. The frame that ends the message has no FLAG_MORE.
* Responses may be as long as requests. What the kernel answers while a frame of its message
  runs goes into that frame's response, up to max_response bytes; while that is full the kernel
  is held (not read). A frame before the message's last is done when its payload has gone in;
  the last frame is done when the kernel's response has ended or max_response bytes are taken.
  In the second case the response carries FLAG_MORE, and the rest is fetched with continuation
  frames: FLAG_CONTINUE, the same kernel and opcode, no payload, each answered with the next
  max_response bytes at most and FLAG_MORE while still more follows. A continuation when the
  kernel has nothing pending is answered STATUS_OK, empty, without FLAG_MORE (so a host may send
  as many as the largest response could need, in the same window). Every response, whatever
  frame it answers, is kept for replay: a retried frame is never run again and no response byte
  is lost or repeated, for a stateful kernel as for a stateless one.
* A kernel whose response is still pending when a new message to it starts has the rest of that
  response taken and dropped first, so no byte of it reaches the new message's response.
* Every good frame to a kernel other than 0 is sequenced, whatever its status: an error
  response uses up its sequence number and is kept for replay like any other, so a host with
  frames in flight does not see every frame after an error answered OUT_OF_SEQUENCE.
* OP_RESET (sequenced, so it happens exactly once) returns the kernel to its state after
  power-on: a message left open is abandoned, a pending response dropped. Answered STATUS_OK,
  empty.
* A kernel that makes no progress for the link's timeout while a frame waits on it is answered
  STATUS_KERNEL_TIMEOUT with an empty payload (a fault of the device, not of the request).
* Errors that a good frame can earn: STATUS_BAD_FRAME (wrong version, a length field that
  disagrees with the frame, a payload on a continuation), STATUS_UNKNOWN_KERNEL,
  STATUS_BAD_OPCODE, STATUS_TOO_LONG (payload over the device's max_payload; the frame is still
  checked and answered), STATUS_KERNEL_ERROR (the kernel raised ``error`` on the last beat of its
  response: the request was malformed; the payload is the rest of its response, which the
  kernel's host module turns into a KernelError) and STATUS_KERNEL_TIMEOUT.
* OP_SYNC's payload is a target sequence number T (u32 LE; a shorter payload is
  STATUS_BAD_FRAME). If T is ahead of the expected number E (0 < T - E < 2**31, modulo 2**32)
  the device sets E to T and forgets its replay window; otherwise (a duplicate or a stale sync)
  nothing changes. Either way the payload of the answer is E afterwards (u32 LE). A sync leaves
  a kernel's open message open.
* STATUS_BUSY is not the gateware's: the end of a transport that one host already holds (a
  virtual board's TCP port) answers another host with one unsequenced system-kernel frame of
  that status, whose payload says so in UTF-8, and closes the connection.

Rules the host keeps, so that no call is ever answered with another request's response:

* A sequence number names one request frame. The host never sends two different frames under
  the same number, and it keeps fewer than SYNC_GAP frames in flight.
* When it opens a device, and after any exchange that failed or was abandoned (responses lost
  past the retry budget, the connection cut, an OUT_OF_SEQUENCE it cannot place, a response it
  cannot decode), the host resynchronises before its next call: it reads the manifest (expected
  number E) and sends OP_SYNC with T = max(E + SYNC_GAP, highest number it has sent + 1). No
  frame numbered below T is executed after that, so a stale frame still on the line (delayed,
  duplicated, or resent by a host that died) is never executed in place of a new one, and a
  stale response can never be matched to a new request. A sync answered with anything but T is
  a failed resynchronisation. The host then reads the counters and ends any message left open
  (an empty final frame, whose response it drops), so that its next call is not appended to the
  bytes of an abandoned one. (A stateful kernel has then taken a request cut short; a call that
  raised may have been applied in part, as on any device that fails mid-request.)
* A response is accepted only if its kernel is the request's and its sequence number is one of
  the current exchange's (for a system request: the nonce of the request). Everything else is
  counted as stale and dropped.
* An exchange spans fewer than 2**31 frames, so that numbers never wrap inside one; a message
  has no other limit.
* Retrying a frame is always safe: the device answers a frame it has run from its replay window.
  The host retries a whole *call* only when the kernel is stateless (running it twice gives the
  same answer and changes nothing).
* The host sizes a message's frames so that what the kernel can answer while one runs fits in
  max_response (each operation declares how many response bytes a request byte can give at
  most, and how many it may hold back from one frame to the next); a kernel that answers more
  than it declared is held, and timed out, rather than let a response byte be lost.

System kernel opcodes:

* OP_MANIFEST: the payload is the expected sequence number (u32 LE) followed by the manifest
  as compact JSON (UTF-8): ``{"link": 2, "board": str, "clock_hz": int, "build": str,
  "max_payload": int, "max_response": int, "window": int,
  "kernels": [{"name": str, "id": int, "version": int, "params": {...}}, ...]}``.
* OP_COUNTERS: the payload is u32 LE counters: first the LINK_COUNTERS, then for each kernel in
  manifest order the KERNEL_COUNTERS.
* OP_SYNC: see above.
"""

from amaranth.lib import data

__all__ = [
    "LINK_VERSION", "HEADER", "HEADER_SIZE", "CRC_SIZE", "SEQ_BITS", "SEQ_MASK",
    "FLAG_MORE", "FLAG_CONTINUE", "FLAG_RESPONSE", "REPLAY_WINDOW", "SYNC_GAP",
    "MAX_PAYLOAD", "MAX_RESPONSE", "MAX_DATAGRAM", "UDP_MAX_PAYLOAD", "UDP_MAX_RESPONSE",
    "SYSTEM_KERNEL_ID",
    "OP_CALL", "OP_RESET", "MAX_OPERATIONS", "OP_MANIFEST", "OP_COUNTERS", "OP_SYNC",
    "STATUS_OK", "STATUS_BAD_FRAME", "STATUS_UNKNOWN_KERNEL", "STATUS_KERNEL_ERROR",
    "STATUS_TOO_LONG", "STATUS_BAD_OPCODE", "STATUS_OUT_OF_SEQUENCE", "STATUS_BUSY",
    "STATUS_KERNEL_TIMEOUT", "STATUS_NAMES",
    "LINK_COUNTERS", "KERNEL_COUNTERS",
]

LINK_VERSION = 2

#: The header, as both ends hold it: fields in wire order, each little-endian. An Amaranth
#: layout packs its first field into the lowest bits, so a header's value as an integer, in
#: ``HEADER_SIZE`` little-endian bytes, is the header on the wire; the gateware fills a
#: ``Signal(HEADER)`` a byte at a time and the host packs and unpacks the same fields
#: (``offload.link.codec``).
HEADER = data.StructLayout({
    "version": 8,  # LINK_VERSION
    "kernel": 8,   # 0 is the system kernel
    "op": 8,       # request: opcode; response: status
    "flags": 8,    # FLAG_*
    "seq": 32,     # sequence number (or a system request's nonce)
    "length": 16,  # payload bytes
})
HEADER_SIZE = HEADER.size // 8
CRC_SIZE = 4
FLAG_MORE = 0x01
FLAG_CONTINUE = 0x02
FLAG_RESPONSE = 0x80

SEQ_BITS = 32
SEQ_MASK = (1 << SEQ_BITS) - 1

#: Responses the device keeps for replay; the host keeps at most this many frames in flight.
REPLAY_WINDOW = 8
#: How far past the expected number a host resynchronises (see the host's rules above).
SYNC_GAP = 1 << 16
#: Default largest request payload a device takes in one frame.
MAX_PAYLOAD = 1024
#: Default largest kernel response a device sends in one frame (and keeps for replay).
MAX_RESPONSE = 1024
#: Largest UDP payload a datagram of the link holds: a 1500-byte Ethernet MTU less a 20-byte
#: IPv4 header and an 8-byte UDP header, so that no datagram is fragmented.
MAX_DATAGRAM = 1472
#: Largest request payload of a device on UDP: the most a datagram holds, less a header, a CRC
#: and 2 bytes, so that a frame one byte over the limit still fits a datagram and gets its
#: STATUS_TOO_LONG (and a multiple of 8, every kernel's beat width, for responses too).
UDP_MAX_PAYLOAD = MAX_DATAGRAM - HEADER_SIZE - CRC_SIZE - 2
#: Largest response payload of a device on UDP: the same.
UDP_MAX_RESPONSE = UDP_MAX_PAYLOAD

SYSTEM_KERNEL_ID = 0

# Opcodes of kernels other than the system kernel: their operations, 0 to MAX_OPERATIONS - 1,
# and OP_RESET. A kernel with one operation calls it OP_CALL.
OP_CALL = 0
MAX_OPERATIONS = 128
OP_RESET = 0xFF
# Opcodes of the system kernel.
OP_MANIFEST = 0
OP_COUNTERS = 1
OP_SYNC = 2

# Response status.
STATUS_OK = 0
STATUS_BAD_FRAME = 1
STATUS_UNKNOWN_KERNEL = 2
STATUS_KERNEL_ERROR = 3
STATUS_TOO_LONG = 4
STATUS_BAD_OPCODE = 5
STATUS_OUT_OF_SEQUENCE = 6
STATUS_BUSY = 7
STATUS_KERNEL_TIMEOUT = 8

STATUS_NAMES = {
    STATUS_OK: "ok",
    STATUS_BAD_FRAME: "bad frame",
    STATUS_UNKNOWN_KERNEL: "unknown kernel",
    STATUS_KERNEL_ERROR: "kernel error",
    STATUS_TOO_LONG: "too long",
    STATUS_BAD_OPCODE: "bad opcode",
    STATUS_OUT_OF_SEQUENCE: "out of sequence",
    STATUS_BUSY: "busy: another host holds the device",
    STATUS_KERNEL_TIMEOUT: "kernel timed out",
}

#: Link-wide counters, in the order OP_COUNTERS reports them.
LINK_COUNTERS = ("frames_in", "bad_crc", "timeouts", "replays", "out_of_sequence", "frames_out")
#: Counters kept for each kernel, in the order OP_COUNTERS reports them.
#: ``open_message`` is 1 while a kernel's message is open: a FLAG_MORE frame has been taken and
#: the frame that ends the message has not. A host that opens a device and finds one open (its
#: predecessor died mid-message) ends it with an empty final frame and drops the response, so
#: that its own first call is not appended to the stranger's bytes.
KERNEL_COUNTERS = ("busy_cycles", "beats_in", "beats_out", "errors", "open_message")

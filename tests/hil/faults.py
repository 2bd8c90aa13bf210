"""A transport wrapper that damages frames on the wire, in both directions."""

from __future__ import annotations

import random

__all__ = ["FaultyTransport"]


class FaultyTransport:
    """Flips bits in, drops, duplicates and delays whole frames, each at ``rate``.

    It works on frames (cut at their 0x00 delimiter), as a noisy UART would damage them: a flip
    anywhere in a frame's bytes, a frame lost whole, a frame arriving twice, or a frame held
    back and delivered after later ones.
    """

    def __init__(self, inner, rate: float, seed: int = 0):
        self.inner = inner
        self.name = f"faulty({inner.name})"
        self.rate = rate
        self.rng = random.Random(seed)
        self.counts = {"flipped": 0, "dropped": 0, "duplicated": 0, "delayed": 0}
        self._held_out: list[bytes] = []
        self._held_in: list[bytes] = []
        self._partial_in = b""

    def _damage(self, frames: list[bytes], held: list[bytes]) -> list[bytes]:
        out = []
        for frame in frames:
            r = self.rng.random()
            if r < self.rate:
                self.counts["dropped"] += 1
                continue
            if r < 2 * self.rate:
                self.counts["flipped"] += 1
                damaged = bytearray(frame)
                damaged[self.rng.randrange(len(frame) - 1)] ^= 1 << self.rng.randrange(8)
                frame = bytes(damaged)
            elif r < 3 * self.rate:
                self.counts["duplicated"] += 1
                out.append(frame)
            elif r < 4 * self.rate:
                self.counts["delayed"] += 1
                held.append(frame)
                continue
            out.append(frame)
        # Held frames come out after the frames that followed them.
        while held and self.rng.random() < 0.5:
            out.append(held.pop(0))
        return out

    @staticmethod
    def _frames(data: bytes) -> tuple[list[bytes], bytes]:
        *whole, rest = data.split(b"\x00")
        return [frame + b"\x00" for frame in whole if frame], rest

    def write(self, data: bytes) -> None:
        frames, rest = self._frames(data)
        assert not rest, "the driver writes whole frames"
        out = self._damage(frames, self._held_out)
        if out:
            self.inner.write(b"".join(out))

    def read(self, timeout: float) -> bytes:
        data = self._partial_in + self.inner.read(timeout)
        frames, self._partial_in = self._frames(data)
        return b"".join(self._damage(frames, self._held_in))

    def close(self) -> None:
        self.inner.close()

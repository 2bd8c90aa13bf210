"""Stream drivers for the link's Amaranth-simulator testbenches.

A source waits a random number of idle cycles before each beat; a sink drops ``ready`` at
random. Both run as async testbenches and take their randomness from a seeded ``random.Random``
so that a failing run can be repeated.
"""

import random

__all__ = ["stream_send", "stream_recv"]


async def stream_send(ctx, stream, payloads, *, rng: random.Random | None = None,
                      idle: float = 0.0):
    """Send each of ``payloads`` on ``stream``, with an idle cycle before a beat with
    probability ``idle`` (repeatedly)."""
    for payload in payloads:
        while rng is not None and rng.random() < idle:
            await ctx.tick()
        ctx.set(stream.valid, 1)
        ctx.set(stream.payload, payload)
        await ctx.tick().until(stream.ready)
        ctx.set(stream.valid, 0)


async def stream_recv(ctx, stream, out: list, *, rng: random.Random | None = None,
                      backpressure: float = 0.0, until=None, cycles: int | None = None):
    """Append the payload of each beat taken from ``stream`` to ``out``.

    ``ready`` is low in a cycle with probability ``backpressure``. Stops when ``until(out)`` is
    true (checked after every beat) or after ``cycles`` cycles; with neither, runs for ever (use
    it as a background testbench).
    """
    count = 0
    while cycles is None or count < cycles:
        ready = rng is None or rng.random() >= backpressure
        ctx.set(stream.ready, ready)
        _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        count += 1
        if valid and ready:
            out.append(payload)
            if until is not None and until(out):
                break
    ctx.set(stream.ready, 0)

"""The root of offload's exceptions.

Every error a user can cause, in any layer, is an :class:`OffloadError`, so that a caller (and
the ``offload`` command) catches one family. The class lives here, in the bottom layer, because
imports only go downwards: ``offload`` may import ``boards``, ``sim`` and ``hdl``, and ``boards``
and ``sim`` may import ``hdl``, so only here can all of them subclass it. ``offload.errors``
re-exports it; ``offload.OffloadError`` is this same class.
"""

__all__ = ["OffloadError"]


class OffloadError(Exception):
    """Base of every error offload raises for a user's input or environment.

    The message says what went wrong and what to do about it; tracebacks are for our bugs.
    """

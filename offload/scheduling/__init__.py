"""Queue arbitration offload: the schedulers' and the PIFO's reference behaviour, and the
figures that say how fair a schedule is.

* :mod:`offload.scheduling.models`: the CPU models the gateware is checked against;
* :mod:`offload.scheduling.fairness`: Jain's index, the lag behind a fluid share, grants per
  cycle.

The kernels are ``offload.kernels.scheduling``'s ``scheduler`` and ``pifo``.
"""

from .models import (
    POLICIES,
    Arrival,
    Departure,
    PifoError,
    PifoModel,
    TraceError,
    schedule,
)

__all__ = ["POLICIES", "Arrival", "Departure", "TraceError", "schedule", "PifoModel",
           "PifoError"]

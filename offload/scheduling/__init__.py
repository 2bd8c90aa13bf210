"""Queue arbitration offload (issue 10): the schedulers' and the PIFO's reference behaviour.

* :mod:`offload.scheduling.models`: the CPU models the gateware will be checked against.
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

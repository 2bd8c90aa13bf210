"""Consensus offload: Paxos roles as kernels, and the host side that drives them.

* :mod:`hdl.kernels.paxos_format`: the one message layout (gateware, models, host).
* :mod:`offload.consensus.models`: the acceptor's and learner's rules, the CPU models.
* :mod:`offload.consensus.proposer`: the proposer, without input or output.
"""

from .models import AcceptorModel, BadMessage, LearnerModel
from .proposer import Proposer

__all__ = ["AcceptorModel", "LearnerModel", "BadMessage", "Proposer"]

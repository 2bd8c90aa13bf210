"""Consensus offload: Paxos roles as kernels, and the host side that drives them.

* :mod:`hdl.kernels.paxos_format`: the one message layout (gateware, models, host).
* :mod:`offload.consensus.models`: the acceptor's and learner's rules, the CPU models.
* :mod:`offload.consensus.proposer`: the proposer, without input or output.
* :mod:`offload.consensus.log`: :class:`ReplicatedLog`, a proposer and a learner over devices.
"""

from hdl.kernels.paxos_format import Message

from .log import MAX_VALUE, Entry, LogFull, NoQuorum, ReplicatedLog
from .models import AcceptorModel, BadMessage, LearnerModel
from .proposer import Proposer

__all__ = ["AcceptorModel", "LearnerModel", "BadMessage", "Proposer", "Message",
           "ReplicatedLog", "Entry", "NoQuorum", "LogFull", "MAX_VALUE"]

"""Virtual boards the consensus tests share: three acceptors and a learner (quorum 2)."""

from __future__ import annotations

import pytest

import offload
from sim.toolchain import ToolchainError

ACCEPTORS = 3
QUORUM = 2
#: The iCEBreaker's own (the narrow roles, their tables in SPRAM): the boards ``offload bench``
#: and ``offload demo paxos`` open, so that their builds serve here too, from the cache.
INSTANCES = 1024


@pytest.fixture(scope="session")
def paxos_boards():
    """``(acceptors, learner)``: three ``paxos_acceptor`` virtual iCEBreakers and one
    ``paxos_learner``, each its own Verilator process, as three boards and a fourth would be."""
    opened = []
    try:
        for _ in range(ACCEPTORS):
            opened.append(offload.open("sim:icebreaker", fallback="never",
                                       kernels=["paxos_acceptor"],
                                       params={"paxos_acceptor": {"instances": INSTANCES}}))
        opened.append(offload.open("sim:icebreaker", fallback="never", kernels=["paxos_learner"],
                                   params={"paxos_learner": {"instances": INSTANCES,
                                                             "quorum": QUORUM}}))
    except ToolchainError as exc:
        for device in opened:
            device.close()
        pytest.skip(f"the virtual boards need Verilator: {exc}")
    yield opened[:ACCEPTORS], opened[ACCEPTORS]
    for device in opened:
        device.close()


@pytest.fixture
def fresh_boards(paxos_boards):
    """The shared boards with every table cleared (and every one still running)."""
    acceptors, learner = paxos_boards
    for device in acceptors:
        if device.virtual_board is not None and not device.virtual_board.running:
            pytest.fail("a test killed a shared board: kill boards of your own")
        device.reset("paxos_acceptor")
    learner.reset("paxos_learner")
    return acceptors, learner

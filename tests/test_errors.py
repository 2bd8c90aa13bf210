"""One family of errors: everything a user can cause is an OffloadError, in every layer."""

import socket
import subprocess
import sys

import pytest

import offload
from boards import BoardError, BuildError
from hdl.errors import OffloadError
from offload.errors import DeviceError, KernelNotFound
from sim.build import SimulationError
from sim.toolchain import ToolchainError, cache_dir, verilator_root


def test_offload_error_is_the_root_in_the_bottom_layer():
    assert offload.OffloadError is OffloadError
    for error in (ToolchainError, SimulationError, BoardError, BuildError, DeviceError,
                  KernelNotFound):
        assert issubclass(error, OffloadError), error
    assert issubclass(BoardError, ValueError)  # as before; callers may catch it so


def test_hdl_errors_imports_no_higher_layer():
    # hdl is the bottom layer: importing its errors must not pull in offload, sim or boards.
    code = ("import sys, hdl.errors; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'offload', 'sim', 'boards'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_sim_board_is_an_offload_error():
    with pytest.raises(OffloadError, match="Unknown board 'nonexistent-board'") as info:
        offload.open("sim:nonexistent-board")
    assert isinstance(info.value, BoardError)


def test_cache_dir_that_is_a_file(tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    monkeypatch.setenv("OFFLOAD_CACHE_DIR", str(afile))
    with pytest.raises(ToolchainError, match="OFFLOAD_CACHE_DIR .* is a file, not a folder"):
        cache_dir()
    monkeypatch.setenv("OFFLOAD_CACHE_DIR", str(afile / "cache"))
    with pytest.raises(ToolchainError, match="cannot make the build cache"):
        cache_dir()
    monkeypatch.setenv("OFFLOAD_CACHE_DIR", str(tmp_path / "new" / "cache"))
    assert cache_dir() == tmp_path / "new" / "cache" and cache_dir().is_dir()


def test_virtual_board_on_a_port_in_use():
    try:
        verilator_root()
    except ToolchainError as exc:
        pytest.skip(f"Verilator is not available: {exc}")
    from offload.gateware import device_design

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        vboard = device_design("icebreaker").virtual_board(port=port)
        with pytest.raises(SimulationError, match=f"port {port}: another program is using it; "
                                                  "choose another port, or 0"):
            vboard.start()
    assert not vboard.running

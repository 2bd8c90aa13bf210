"""Open boards: what offload supports, and building bitstreams for them.

:mod:`boards.registry` names the boards; :mod:`boards.top` has the top-level designs that put
a kernel between a board's pins; :mod:`boards.build` runs the YoWASP tools and reports fmax and
resource use.
"""

from .build import BuildError, BuildReport, build
from .registry import BOARDS, ETH_BOARDS, Board, BoardError, EthBoard, get_board
from .top import KernelPinTop, PinTop

__all__ = [
    "BOARDS",
    "Board",
    "BoardError",
    "ETH_BOARDS",
    "EthBoard",
    "BuildError",
    "BuildReport",
    "KernelPinTop",
    "PinTop",
    "build",
    "get_board",
]

# Type stub of the C++ extension (csrc/bindings.cpp). Users call it through rnncore's Python
# classes, which check every argument; the extension checks only what memory safety needs.
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from numpy.typing import NDArray

MAX_THREADS: int

class Tape:
    """What a training forward keeps for backward (opaque)."""

    @property
    def nbytes(self) -> int: ...

# per layer and direction: the cell's parameters in its order (cell_info), then W_hr when projecting;
# more entries may follow as None
_Weights = Sequence[Sequence[Optional[np.ndarray]]]

def forward(
    cell: int,
    layers: int,
    dirs: int,
    weights: _Weights,
    x: np.ndarray,
    h0: np.ndarray,
    c0: Optional[np.ndarray],
    lengths: Optional[NDArray[np.int64]],
    masks: Optional[np.ndarray],
    train: bool,
    hidden_size: int = 0,
) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Optional[Tape]]: ...
def backward(
    tape: Tape,
    weights: _Weights,
    masks: Optional[np.ndarray],
    dy: Optional[np.ndarray],
    dh_n: Optional[np.ndarray],
    dc_n: Optional[np.ndarray],
) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], List[Tuple[np.ndarray, ...]]]: ...
def cell_info() -> Dict[str, Dict[str, Any]]: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def packed_bytes_of_last_call() -> int: ...
def bench_step_gemm(M: int, K: int, N: int, reps: int, rounds: int) -> float: ...
def bench_gemv_floor(rows: int, K: int, steps: int, threads: int, rounds: int) -> float: ...
def team_stats() -> Dict[str, int]: ...
def blas_corename() -> str: ...
def blas_config() -> str: ...
def kernel_isa() -> str: ...

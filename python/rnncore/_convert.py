"""Exact weight conversions between rnncore and PyTorch's nn.RNN / nn.LSTM / nn.GRU.

PyTorch keeps two biases per gate (bias_ih, bias_hh); rnncore keeps their sum, except for the
n gate of the reset_after GRU, whose recurrent bias sits inside r * (...) and stays separate as
b_hn. PyTorch's GRU writes h = (1 - z') * n + z' * h_prev; rnncore's z weights n, so z = 1 - z'
= sigmoid(-a_z'): the z rows of both weight matrices and of the bias change sign.
Only rnncore's reset_after GRU has a PyTorch equivalent. LSTMP's projection (proj_size) is
PyTorch's weight_hr_l{k}, rnncore's W_hr_l{k}, unchanged.
"""

import numpy as np

from .models import CELL_INFO


def _check_cell(cell):
    torch_cells = sorted(c for c, info in CELL_INFO.items() if info["torch"])
    if cell not in torch_cells:
        raise ValueError(f"cell: expected one of {torch_cells} (the cells with a PyTorch counterpart; PyTorch has "
                         f"no GRU with the reset gate applied before the matmul, no peephole or LayerNorm LSTM), "
                         f"got {cell!r}")


def _z_sign(cell, H, dtype):
    """+1 everywhere, -1 on the GRU's z rows."""
    s = np.ones(CELL_INFO[cell]["gates"] * H, dtype)
    if cell == "gru_after":
        s[H:2 * H] = -1
    return s


def _numpy(v, name):
    if isinstance(v, np.ma.MaskedArray):
        raise TypeError(f"state_dict[{name!r}]: masked arrays are not supported (the mask would be ignored); "
                        f"pass a plain ndarray")
    return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)


def _suffixes(names):
    """'_l0', '_l0_reverse', ... in PyTorch's order, from the names present."""
    return sorted({n[len("weight_ih"):] for n in names if n.startswith("weight_ih")},
                  key=lambda s: (int(s[2:].split("_")[0]), s.endswith("_reverse")))


def from_torch_state_dict(state_dict, cell):
    """rnncore parameters (name -> ndarray) from a PyTorch RNN/LSTM/GRU state dict.

    cell: "rnn_tanh", "rnn_relu", "lstm" or "gru_after" (a PyTorch GRU). Values may be tensors or
    arrays; dtypes are kept.
    """
    _check_cell(cell)
    sd = {k: _numpy(v, k) for k, v in state_dict.items()}
    out = {}
    for sfx in _suffixes(sd):
        W_ih, W_hh = sd["weight_ih" + sfx], sd["weight_hh" + sfx]
        H = W_hh.shape[0] // CELL_INFO[cell]["gates"]
        b_ih = sd.get("bias_ih" + sfx, np.zeros(W_ih.shape[0], W_ih.dtype))
        b_hh = sd.get("bias_hh" + sfx, np.zeros(W_ih.shape[0], W_ih.dtype))
        sign = _z_sign(cell, H, W_ih.dtype)
        out["W_ih" + sfx] = W_ih * sign[:, None]
        out["W_hh" + sfx] = W_hh * sign[:, None]
        if cell == "gru_after":
            b = b_ih.copy()
            b[:2 * H] += b_hh[:2 * H]
            out["b" + sfx] = b * sign
            out["b_hn" + sfx] = b_hh[2 * H:].copy()
        else:
            out["b" + sfx] = b_ih + b_hh
        if "weight_hr" + sfx in sd:
            out["W_hr" + sfx] = sd["weight_hr" + sfx].copy()
    return out


def to_torch_state_dict(params, cell):
    """A PyTorch state dict (name -> ndarray) from rnncore parameters; inverse of the above."""
    _check_cell(cell)
    out = {}
    for name in params:
        if not name.startswith("W_ih"):
            continue
        sfx = name[len("W_ih"):]
        W_ih, W_hh, b = params["W_ih" + sfx], params["W_hh" + sfx], params["b" + sfx]
        H = W_hh.shape[0] // CELL_INFO[cell]["gates"]
        sign = _z_sign(cell, H, W_ih.dtype)
        out["weight_ih" + sfx] = W_ih * sign[:, None]
        out["weight_hh" + sfx] = W_hh * sign[:, None]
        b_ih = b * sign
        b_hh = np.zeros_like(b_ih)
        if cell == "gru_after":
            b_hh[2 * H:] = params["b_hn" + sfx]
        out["bias_ih" + sfx] = b_ih
        out["bias_hh" + sfx] = b_hh
        if "W_hr" + sfx in params:
            out["weight_hr" + sfx] = params["W_hr" + sfx].copy()
    return out

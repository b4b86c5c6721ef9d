"""A small training toolkit for rnncore models: a loss, a linear readout, gradient clipping, Adam.

Everything works on plain ndarrays and on dicts name -> ndarray, the same shape as a model's
``parameters()`` and ``backward()`` results, so one training step reads::

    y, h_n, tape = rnn.forward(x, train=True)          # x (T, N, D), h_n (1, N, H)
    pred = readout.forward(h_n[-1])                    # (N, H) -> (N, out)
    loss, dpred = mse_loss(pred, target)               # target (N, out)
    dh = readout.backward(dpred)                       # (N, H); readout.grads filled
    grads = rnn.backward(tape, dh_n=dh[None])          # dh_n (1, N, H)
    params = {**rnn.parameters(), **{"readout." + k: v for k, v in readout.parameters().items()}}
    grads = {**{k: grads[k] for k in rnn.parameters()}, **{"readout." + k: v for k, v in readout.grads.items()}}
    clip_grad_norm(grads, 1.0)
    opt.step(grads)                                    # opt = Adam(params), built once
"""

import numpy as np

__all__ = ["mse_loss", "Linear", "clip_grad_norm", "Adam"]


def mse_loss(pred, target):
    """Mean squared error over every element.

    pred, target: arrays of the same shape. Returns (loss, dpred): loss a Python float,
    dpred = d loss / d pred, shape and dtype of pred.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target: expected the same shape, got {pred.shape} and {target.shape}")
    if pred.size == 0:
        raise ValueError("pred: expected at least one element")
    diff = pred - target.astype(pred.dtype, copy=False)
    loss = float(np.mean(np.square(diff, dtype=np.float64)))
    dpred = (diff * (2.0 / diff.size)).astype(pred.dtype, copy=False)
    return loss, dpred


class Linear:
    """y = x W^T + b, for reading out hidden states.

    Parameters: "W" (out_features, in_features), "b" (out_features,), initialised uniform in
    ±1/sqrt(in_features) from ``seed``. ``forward`` keeps its input for one ``backward``.
    """

    def __init__(self, in_features, out_features, dtype=np.float32, seed=None):
        if int(in_features) < 1 or int(out_features) < 1:
            raise ValueError(f"in_features, out_features: expected positive ints, got {in_features}, {out_features}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        k = 1.0 / np.sqrt(self.in_features)
        self._params = {
            "W": rng.uniform(-k, k, size=(self.out_features, self.in_features)).astype(self.dtype),
            "b": rng.uniform(-k, k, size=(self.out_features,)).astype(self.dtype),
        }
        self.grads = {}
        self._x = None

    def parameters(self):
        """The live parameters, name -> ndarray; editing an array in place changes the layer."""
        return self._params

    def forward(self, x):
        """x (..., in_features) -> y (..., out_features)."""
        x = np.asarray(x)
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"x: expected last dimension in_features={self.in_features}, got shape {x.shape}")
        self._x = x
        return x @ self._params["W"].T + self._params["b"]

    def backward(self, dy):
        """dy (..., out_features), like the last forward's y -> dx (..., in_features).

        Sets ``grads`` = {"W": dL/dW, "b": dL/db}, summed over all leading axes.
        """
        if self._x is None:
            raise RuntimeError("backward: call forward first")
        dy = np.asarray(dy)
        want = self._x.shape[:-1] + (self.out_features,)
        if dy.shape != want:
            raise ValueError(f"dy: expected shape {want} (like y), got {dy.shape}")
        x2 = self._x.reshape(-1, self.in_features)
        dy2 = dy.reshape(-1, self.out_features)
        self.grads = {"W": (dy2.T @ x2).astype(self.dtype, copy=False),
                      "b": dy2.sum(axis=0).astype(self.dtype, copy=False)}
        return dy @ self._params["W"]


def clip_grad_norm(grads, max_norm):
    """Scale every array in ``grads`` (dict name -> ndarray) in place so that their global L2 norm
    is at most ``max_norm``. Returns the norm before clipping (a float, computed in float64).

    Pass parameter gradients only: a model's backward also returns "x" and "h0", which are not.
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm: expected a positive number, got {max_norm!r}")
    total = float(np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values())))
    if total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in grads.values():
            g *= g.dtype.type(scale)
    return total


class Adam:
    """Adam (Kingma & Ba, 2015) with bias correction, updating ``params`` in place.

    For each parameter p with gradient g, at step t = 1, 2, ...:
        g <- g + weight_decay * p                 (L2 penalty, as torch.optim.Adam; not AdamW)
        m <- beta1 * m + (1 - beta1) * g          v <- beta2 * v + (1 - beta2) * g^2
        p <- p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
    m and v start at zero and have each parameter's shape and dtype.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if not lr > 0:
            raise ValueError(f"lr: expected a positive number, got {lr!r}")
        b1, b2 = betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas: expected two numbers in [0, 1), got {betas!r}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay: expected a number >= 0, got {weight_decay!r}")
        for name, p in params.items():
            if not isinstance(p, np.ndarray) or p.dtype.kind != "f":
                raise TypeError(f"params[{name!r}]: expected a floating point ndarray")
        self.params = params
        self.lr, self.betas, self.eps, self.weight_decay = float(lr), (float(b1), float(b2)), float(eps), float(weight_decay)
        self.t = 0
        self.m = {k: np.zeros_like(p) for k, p in params.items()}
        self.v = {k: np.zeros_like(p) for k, p in params.items()}

    def step(self, grads):
        """One update. ``grads`` must hold a gradient of the same shape for every parameter name;
        other keys (a model's "x", "h0", ...) are ignored."""
        missing = [k for k in self.params if k not in grads]
        if missing:
            raise KeyError(f"grads: no gradient for {missing}")
        for k, p in self.params.items():
            if np.shape(grads[k]) != p.shape:
                raise ValueError(f"grads[{k!r}]: expected shape {p.shape}, got {np.shape(grads[k])}")
        self.t += 1
        b1, b2 = self.betas
        step_size = self.lr / (1.0 - b1 ** self.t)
        v_correction = 1.0 / (1.0 - b2 ** self.t)
        for k, p in self.params.items():
            g = np.asarray(grads[k], dtype=p.dtype)
            if self.weight_decay:
                g = g + p.dtype.type(self.weight_decay) * p
            m, v = self.m[k], self.v[k]
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * np.square(g)
            p -= (step_size * m / (np.sqrt(v * v_correction) + self.eps)).astype(p.dtype, copy=False)

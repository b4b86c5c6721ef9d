"""Saving and loading models: a NumPy .npz archive, readable without rnncore.

The archive holds one entry per parameter (name -> array, as in ``state_dict()``) and an entry
``__rnncore__``: a 0-d unicode array with a JSON object

    {"format": "rnncore", "version": 1, "type": "LSTM", "config": {input_size, hidden_size, num_layers,
     bidirectional, batch_first, dropout, dtype[, nonlinearity | reset_after]}}

Reading uses ``np.load(allow_pickle=False)``: nothing in the file is executed. Every entry's
name, shape and dtype are checked against the configuration before any array is read in full,
and the zip CRCs catch corrupted bytes; any problem is a ValueError and no model is returned.
"""

import json
import os
import tempfile

import numpy as np

from . import models

META = "__rnncore__"
FORMAT, VERSION = "rnncore", 1
_TYPES = {"RNN": models.RNN, "LSTM": models.LSTM, "GRU": models.GRU}
_CONFIG_KEYS = {"input_size", "hidden_size", "num_layers", "bidirectional", "batch_first", "dropout", "dtype"}
_EXTRA_KEYS = {"RNN": {"nonlinearity"}, "LSTM": set(), "GRU": {"reset_after"}}
_MAX_META_BYTES = 1 << 20


def _type_name(model):
    for name, cls in _TYPES.items():
        if isinstance(model, cls):
            return name
    raise TypeError(f"expected an rnncore RNN, LSTM or GRU, got {type(model).__name__}")


def _config(model):
    name = _type_name(model)
    cfg = dict(input_size=model.input_size, hidden_size=model.hidden_size, num_layers=model.num_layers,
               bidirectional=model.bidirectional, batch_first=model.batch_first, dropout=model.dropout,
               dtype=model.dtype.name)
    if name == "RNN":
        cfg["nonlinearity"] = model.nonlinearity
    if name == "GRU":
        cfg["reset_after"] = model.reset_after
    return name, cfg


def save(model, path):
    """Write ``model`` to ``path`` (a file name, written atomically, or a binary file object)."""
    name, cfg = _config(model)
    model._weights()                        # a parameter of the wrong shape or dtype is named here
    meta = json.dumps({"format": FORMAT, "version": VERSION, "type": name, "config": cfg}, sort_keys=True)
    entries = {META: np.array(meta)}
    for k, a in model.parameters().items():
        entries[k] = np.ascontiguousarray(a)
    if hasattr(path, "write"):
        np.savez(path, **entries)
        return
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".rnncore-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **entries)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _BadFile(ValueError):
    pass


def _bad(path, why):
    return _BadFile(f"{path}: not a valid rnncore model file: {why}")


def _header(z, key):
    """(shape, dtype) of an entry, from its .npy header only."""
    with z.zip.open(key + ".npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"entry {key!r}: .npy format version {version}")
    return shape, np.dtype(dtype)


def _check_size(path, stored_bytes, name, cfg):
    """Before allocating anything: the configuration's parameters must fit in the archive."""
    sizes = [cfg[k] for k in ("input_size", "hidden_size", "num_layers")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sizes):
        raise _bad(path, f"bad config: input_size, hidden_size and num_layers must be positive ints, got {sizes}")
    D, H, L = sizes
    dirs = 2 if cfg["bidirectional"] is True else 1
    G = {"RNN": 1, "LSTM": 4, "GRU": 3}[name]
    recurrent = G * H * (H + 1) + (H if name == "GRU" and cfg["reset_after"] is True else 0)
    count = dirs * (G * H * D + recurrent) + (L - 1) * dirs * (G * H * dirs * H + recurrent)
    if count * np.dtype(cfg["dtype"]).itemsize > stored_bytes:
        raise _bad(path, f"the configuration has {count} parameters, more than the file holds")


def _parse_config(path, meta, stored_bytes):
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _bad(path, "the __rnncore__ entry is not an rnncore header")
    if meta.get("version") != VERSION:
        raise _bad(path, f"format version {meta.get('version')!r}; this rnncore reads version {VERSION}")
    name = meta.get("type")
    if name not in _TYPES:
        raise _bad(path, f"model type {name!r} (expected one of {sorted(_TYPES)})")
    cfg = meta.get("config")
    want = _CONFIG_KEYS | _EXTRA_KEYS[name]
    if not isinstance(cfg, dict) or set(cfg) != want:
        got = sorted(cfg) if isinstance(cfg, dict) else cfg
        raise _bad(path, f"config keys {got} (expected {sorted(want)})")
    if cfg["dtype"] not in ("float32", "float64"):
        raise _bad(path, f"dtype {cfg['dtype']!r}")
    _check_size(path, stored_bytes, name, cfg)
    try:
        model = _TYPES[name](**cfg)
    except (TypeError, ValueError) as e:
        raise _bad(path, f"bad config: {e}") from None
    return model


def _read(path):
    """A new model from ``path``; ValueError on anything unexpected."""
    shown = path if isinstance(path, (str, os.PathLike)) else "<file>"
    try:
        z = np.load(path, allow_pickle=False)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:
        raise _bad(shown, f"{type(e).__name__}: {e}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise _bad(shown, "a single .npy array, not an .npz archive")
    with z:
        try:
            files = set(z.files)
            if META not in files:
                raise _bad(shown, f"no {META} entry")
            shape, dtype = _header(z, META)
            if shape != () or dtype.kind != "U" or dtype.itemsize > _MAX_META_BYTES:
                raise _bad(shown, f"the {META} entry is {dtype} of shape {shape}, not a JSON string")
            meta = json.loads(str(z[META][()]))
            model = _parse_config(shown, meta, sum(i.file_size for i in z.zip.infolist()))
            expected = dict(model._param_shapes())
            missing, unexpected = sorted(set(expected) - files), sorted(files - set(expected) - {META})
            if missing or unexpected:
                raise _bad(shown, f"parameters do not match a {model!r}: missing {missing}, unexpected {unexpected}")
            for key, want in expected.items():
                shape, dtype = _header(z, key)
                if shape != want or dtype.newbyteorder("=") != model.dtype:
                    raise _bad(shown, f"parameter {key!r} is {dtype} of shape {shape}; expected {model.dtype} "
                                      f"of shape {want}")
            arrays = {}
            for key in expected:
                a = z[key]
                if a.shape != expected[key] or a.dtype.newbyteorder("=") != model.dtype:
                    raise _bad(shown, f"parameter {key!r} changed while reading")
                arrays[key] = a
        except _BadFile:
            raise
        except Exception as e:
            raise _bad(shown, f"{type(e).__name__}: {e}") from None
    model.load_state_dict(arrays)
    return model


def load(path):
    """A new model (RNN, LSTM or GRU) from a file written by ``Model.save``.

    ``path`` is a file name or a binary file object. Raises ValueError for a file that is not
    a complete, consistent rnncore model file (truncated, corrupted, edited, other format).
    """
    return _read(path)


def load_into(model, path):
    """Read the parameters of ``path`` into ``model`` (same architecture and dtype); returns model."""
    model._weights()                        # load_state_dict copies into these: they must be sound
    loaded = _read(path)
    mine, theirs = _config(model), _config(loaded)
    keys = ("input_size", "hidden_size", "num_layers", "bidirectional", "dtype", "nonlinearity", "reset_after")
    diff = [k for k in keys if mine[1].get(k) != theirs[1].get(k)]
    if mine[0] != theirs[0] or diff:
        raise ValueError(f"load: the file holds a {loaded!r}, which does not fit this {model!r}"
                         + (f" ({', '.join(diff)} differ)" if diff else ""))
    model.load_state_dict(loaded.parameters())
    return model


"""Saving and loading models: a NumPy .npz archive, readable without rnncore.

The archive holds one entry per parameter (name -> array, as in ``state_dict()``) and an entry
``__rnncore__``: a 0-d unicode array with a JSON object

    {"format": "rnncore", "version": 1, "type": "LSTM", "config": {input_size, hidden_size, num_layers,
     bidirectional, batch_first, dropout, dtype[, nonlinearity | reset_after | the LSTM variant's proj_size, peephole, layer_norm]}}

Reading executes nothing from the file (no pickle) and allocates nothing that the file's own
bytes do not back. In order, and any problem is a ValueError with no model returned:

1. the zip directory: no name twice, entries stored (``np.savez``) or deflated
   (``np.savez_compressed``), and the stored entries' sizes within the file's actual length;
2. the ``__rnncore__`` header (at most ``MAX_HEADER_CHARS`` characters) and the whole
   configuration (``num_layers`` at most ``MAX_LAYERS``, sizes within the core's limits),
   without building a model;
3. every entry's name, and its dtype and shape from its .npy header (at most
   ``MAX_NPY_HEADER_BYTES``), against the configuration;
4. the data, each entry read in chunks as its bytes arrive (a deflated entry cannot make the
   reader allocate more than it really decompresses to), CRC-checked by the zip reader;
5. and only then the model, which takes those arrays as its parameters (no random initialisation).
So loading a file of B bytes peaks at O(B + the model it really contains) memory.
"""

import collections
import io
import json
import os
import struct
import tempfile
import zipfile

import numpy as np

from . import models
from .models import _listed, _short_repr

META = "__rnncore__"
FORMAT, VERSION = "rnncore", 1
MAX_LAYERS = 1024                # num_layers of a model in a file
MAX_HEADER_CHARS = 16384         # characters of the __rnncore__ JSON string
MAX_NPY_HEADER_BYTES = 10000     # bytes of an entry's .npy header (NumPy's own default limit)
MAX_SIZE = 2**31 - 1             # input_size and hidden_size (the core's BLAS counts are 32-bit)
_CHUNK = 1 << 20
_TYPES: "dict[str, type[models._Recurrent]]" = {"RNN": models.RNN, "LSTM": models.LSTM, "GRU": models.GRU}
_CONFIG_KEYS = {"input_size", "hidden_size", "num_layers", "bidirectional", "batch_first", "dropout", "dtype"}
_EXTRA_KEYS = {"RNN": {"nonlinearity"}, "LSTM": set(), "GRU": {"reset_after"}}
_OPTIONAL_KEYS = {"RNN": set(), "LSTM": {"proj_size", "peephole", "layer_norm"}, "GRU": set()}  # variants


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
    cfg.update(model._extra_config())
    return name, cfg


def save(model, path):
    """Write ``model`` to ``path`` (a file name, written atomically, or a binary file object)."""
    name, cfg = _config(model)
    if model.num_layers > MAX_LAYERS:
        raise ValueError(f"num_layers: a model file holds at most {MAX_LAYERS} layers (rnncore.load's limit), "
                         f"got {model.num_layers}")
    model._weights()                        # a missing parameter, or one of the wrong shape or dtype, is named here
    meta = json.dumps({"format": FORMAT, "version": VERSION, "type": name, "config": cfg}, sort_keys=True)
    entries = {META: np.array(meta)}
    params = model.parameters()
    for k, _ in model._param_shapes():      # the model's own parameters, whatever else its dict holds
        entries[k] = np.ascontiguousarray(params[k])
    if hasattr(path, "write"):
        np.savez(path, **entries)  # type: ignore[arg-type]  # NumPy's stub types **kwds as allow_pickle
        return
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".rnncore-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **entries)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _BadFile(ValueError):
    pass


def _bad(path, why, limit=2000):
    if len(why) > limit:
        why = why[:limit] + f"... ({len(why)} characters in all)"
    return _BadFile(f"{path}: not a valid rnncore model file: {why}")


def _read_exactly(f, n, shown, key):
    """n bytes of the entry open in f, read in chunks (so a short entry never costs n bytes)."""
    chunks, got = [], 0
    while got < n:
        c = f.read(min(n - got, _CHUNK))
        if not c:
            raise _bad(shown, f"entry {_short_repr(key)} ends after {got} of {n} bytes")
        chunks.append(c)
        got += len(c)
    return b"".join(chunks)


def _npy_header(f, shown, key):
    """(shape, fortran_order, dtype, header bytes) of the .npy entry open in f, read from its header only."""
    magic = _read_exactly(f, 8, shown, key)
    if magic[:6] != b"\x93NUMPY":
        raise _bad(shown, f"entry {_short_repr(key)} is not a .npy array")
    version = (magic[6], magic[7])
    if version not in ((1, 0), (2, 0)):
        raise _bad(shown, f"entry {_short_repr(key)}: .npy format version {version}")
    size_bytes = _read_exactly(f, 2 if version == (1, 0) else 4, shown, key)
    length = struct.unpack("<H" if version == (1, 0) else "<I", size_bytes)[0]
    if length > MAX_NPY_HEADER_BYTES:
        raise _bad(shown, f"entry {_short_repr(key)}: a .npy header of {length} bytes (at most "
                          f"{MAX_NPY_HEADER_BYTES})")
    header = _read_exactly(f, length, shown, key)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(io.BytesIO(size_bytes + header), max_header_size=MAX_NPY_HEADER_BYTES)
    return tuple(shape), bool(fortran), np.dtype(dtype), 8 + len(size_bytes) + length


def _read_data(f, info, nbytes, shown, key):
    """The entry's nbytes of data as a writeable uint8 array. A stored entry's bytes are in the file
    (its size was checked against the file's length), so its array is allocated at once; a deflated
    entry's array grows only as its data really decompresses."""
    if info.compress_type == zipfile.ZIP_STORED:
        out = np.empty(nbytes, np.uint8)
        view, got = memoryview(out), 0  # type: ignore[arg-type]  # an ndarray is a buffer
        while got < nbytes:
            c = f.read(min(nbytes - got, _CHUNK))
            if not c:
                raise _bad(shown, f"entry {_short_repr(key)} ends after {got} of {nbytes} data bytes")
            view[got:got + len(c)] = c
            got += len(c)
    else:
        out = np.frombuffer(bytearray(_read_exactly(f, nbytes, shown, key)), np.uint8)
    if f.read(1):  # also where the zip reader checks the entry's CRC
        raise _bad(shown, f"entry {_short_repr(key)} has bytes after its data")
    return out


def _check_directory(z, size, shown):
    """The zip directory before any entry is read: names unique, methods known, sizes backed."""
    infos = z.infolist()
    counts = collections.Counter(i.filename for i in infos)
    twice = [n for n, c in counts.items() if c > 1]
    if twice:
        raise _bad(shown, f"entries named more than once {_listed(twice)} (which copy a reader takes is arbitrary)")
    for i in infos:
        if i.flag_bits & 0x1:
            raise _bad(shown, f"entry {_short_repr(i.filename)} is encrypted")
        if i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _bad(shown, f"entry {_short_repr(i.filename)} uses zip compression method {i.compress_type}; "
                              f"rnncore files are stored (np.savez) or deflated (np.savez_compressed)")
        if i.compress_type == zipfile.ZIP_STORED and i.compress_size != i.file_size:
            raise _bad(shown, f"entry {_short_repr(i.filename)} declares {i.file_size} bytes but stores "
                              f"{i.compress_size}")
    stored = sum(i.compress_size for i in infos)
    if stored > size:
        raise _bad(shown, f"the zip directory declares {stored} bytes of entries, more than the file's {size} bytes")
    return {i.filename: i for i in infos}


def _read_meta(z, info, shown):
    with z.open(info) as f:
        shape, _, dtype, _ = _npy_header(f, shown, META)
        if shape != () or dtype.kind != "U" or dtype.itemsize > 4 * MAX_HEADER_CHARS:
            raise _bad(shown, f"the {META} entry is {dtype} of shape {shape}, not a JSON string of at most "
                              f"{MAX_HEADER_CHARS} characters")
        raw = _read_exactly(f, dtype.itemsize, shown, META)
    return json.loads(str(np.frombuffer(raw, dtype)[0]))


def _unparameterised_model(shown, meta):
    """The configured model, all of it checked, with no parameters allocated."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _bad(shown, "the __rnncore__ entry is not an rnncore header")
    if meta.get("version") != VERSION:
        raise _bad(shown, f"format version {_short_repr(meta.get('version'))}; this rnncore reads version {VERSION}")
    name = meta.get("type")
    if not isinstance(name, str) or name not in _TYPES:
        raise _bad(shown, f"model type {_short_repr(name)} (expected one of {sorted(_TYPES)})")
    cfg = meta.get("config")
    want, optional = _CONFIG_KEYS | _EXTRA_KEYS[name], _OPTIONAL_KEYS[name]
    if not isinstance(cfg, dict) or not want <= set(cfg) <= want | optional:
        got = _listed(cfg) if isinstance(cfg, dict) else _short_repr(cfg)
        also = f", and any of {sorted(optional)}" if optional else ""
        raise _bad(shown, f"config keys {got} (expected {sorted(want)}{also})")
    if not isinstance(cfg["dtype"], str) or cfg["dtype"] not in ("float32", "float64"):
        raise _bad(shown, f"dtype {_short_repr(cfg['dtype'])}")
    sizes = {k: cfg[k] for k in ("input_size", "hidden_size", "num_layers")}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sizes.values()):
        raise _bad(shown, "bad config: input_size, hidden_size and num_layers must be positive ints, got "
                          + ", ".join(f"{k}={_short_repr(v)}" for k, v in sizes.items()))
    if sizes["num_layers"] > MAX_LAYERS:
        raise _bad(shown, f"bad config: num_layers={sizes['num_layers']}; a model file holds at most {MAX_LAYERS}")
    for k in ("input_size", "hidden_size"):
        if sizes[k] > MAX_SIZE:
            raise _bad(shown, f"bad config: {k}={sizes[k]}; at most {MAX_SIZE}")
    try:
        return _TYPES[name]._unparameterised(cfg)
    except (TypeError, ValueError) as e:
        raise _bad(shown, f"bad config: {e}") from None


def _read_archive(f, shown):
    start = f.tell()
    size = f.seek(0, os.SEEK_END) - start
    f.seek(start)
    if f.read(6) == b"\x93NUMPY":
        raise _bad(shown, "a single .npy array, not an .npz archive")
    f.seek(start)
    with zipfile.ZipFile(f) as z:
        infos = _check_directory(z, size, shown)
        if META + ".npy" not in infos:
            raise _bad(shown, f"no {META} entry")
        model = _unparameterised_model(shown, _read_meta(z, infos[META + ".npy"], shown))
        expected = dict(model._param_shapes())
        present = {n[:-4] if n.endswith(".npy") else n: n for n in infos if n != META + ".npy"}
        missing, unexpected = set(expected) - set(present), set(present) - set(expected)
        if missing or unexpected:
            raise _bad(shown, f"parameters do not match a {model!r}: missing {_listed(missing)}, "
                              f"unexpected {_listed(unexpected)}")
        itemsize = model.dtype.itemsize
        need = model.num_parameters() * itemsize
        held = sum(infos[present[k]].file_size for k in expected)
        if need > held:
            raise _bad(shown, f"the configuration has {need // itemsize} parameters ({need} bytes), more than the "
                              f"file holds ({held} bytes of entries)")
        headers = {}
        for key, want in expected.items():      # every header before any data
            info = infos[present[key]]
            with z.open(info) as e:
                shape, fortran, dtype, offset = _npy_header(e, shown, key)
            if shape != want or dtype.kind != "f" or dtype.newbyteorder("=") != model.dtype:
                raise _bad(shown, f"parameter {key!r} is {dtype} of shape {shape}; expected {model.dtype} "
                                  f"of shape {want}")
            nbytes = int(np.prod(want)) * itemsize
            if info.file_size != offset + nbytes:
                raise _bad(shown, f"entry {info.filename!r} declares {info.file_size} bytes; its header says "
                                  f"{offset + nbytes}")
            headers[key] = (info, fortran, dtype, offset, nbytes)
        arrays = {}
        for key, (info, fortran, dtype, offset, nbytes) in headers.items():
            with z.open(info) as e:
                _read_exactly(e, offset, shown, key)
                a = _read_data(e, info, nbytes, shown, key).view(dtype)
            a = a.reshape(expected[key][::-1]).T if fortran else a.reshape(expected[key])
            if not dtype.isnative:
                a = a.astype(model.dtype)
            arrays[key] = np.ascontiguousarray(a)
    return model._adopt(arrays)


def _read(path):
    """A new model from ``path``; ValueError on anything unexpected."""
    shown = os.fspath(path) if isinstance(path, (str, os.PathLike)) else "<file>"
    own = not hasattr(path, "read")
    f = open(path, "rb") if own else path   # FileNotFoundError, IsADirectoryError, PermissionError as they are
    try:
        return _read_archive(f, shown)
    except (_BadFile, MemoryError):
        raise
    except Exception as e:
        raise _bad(shown, f"{type(e).__name__}: {e}") from None
    finally:
        if own:
            f.close()


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
    keys = ("input_size", "hidden_size", "num_layers", "bidirectional", "dtype", "nonlinearity", "reset_after",
            "proj_size", "peephole", "layer_norm")
    diff = [k for k in keys if mine[1].get(k) != theirs[1].get(k)]
    if mine[0] != theirs[0] or diff:
        raise ValueError(f"load: the file holds a {loaded!r}, which does not fit this {model!r}"
                         + (f" ({', '.join(diff)} differ)" if diff else ""))
    model.load_state_dict(loaded.parameters())
    return model

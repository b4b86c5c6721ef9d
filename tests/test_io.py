"""model.save / rnncore.load / model.load: the .npz format and what a bad file does."""

import io
import json
import os
import struct
import zipfile

import numpy as np
import pytest

import rnncore

VARIANTS = ("rnn_tanh", "rnn_relu", "lstm", "gru", "gru_after")
EXECUTED = []


def model(variant, num_layers=2, bidirectional=True, dtype=np.float32, **kw):
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, dtype=dtype, seed=0, **kw)
    if variant.startswith("rnn_"):
        return rnncore.RNN(3, 4, nonlinearity=variant[4:], **kw)
    if variant == "lstm":
        return rnncore.LSTM(3, 4, **kw)
    return rnncore.GRU(3, 4, reset_after=variant == "gru_after", **kw)


def same(a, b):
    assert type(a) is type(b) and repr(a) == repr(b)
    assert set(a.parameters()) == set(b.parameters())
    for k, v in a.parameters().items():
        assert b.parameters()[k].dtype == v.dtype, k
        np.testing.assert_array_equal(b.parameters()[k], v, err_msg=k)


def entries(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def write(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True), (2, False), (1, True)])
@pytest.mark.parametrize("variant", VARIANTS)
def test_save_load_round_trip_is_exact(variant, num_layers, bidirectional, dtype, tmp_path):
    m = model(variant, num_layers, bidirectional, dtype, batch_first=bidirectional, dropout=0.25)
    path = tmp_path / "model.npz"
    m.save(path)
    loaded = rnncore.load(path)
    same(m, loaded)
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(dtype)
    np.testing.assert_array_equal(loaded(x)[0], m(x)[0])


def test_format_is_plain_npz_with_a_json_header(tmp_path):
    m = model("gru", dropout=0.5, batch_first=True)
    path = tmp_path / "weights"                # no suffix added: the file is exactly where asked
    m.save(str(path))
    assert os.listdir(tmp_path) == ["weights"]           # and no temporary file left behind
    e = entries(path)
    meta = json.loads(str(e.pop("__rnncore__")))
    assert meta == {"format": "rnncore", "version": 1, "type": "GRU",
                    "config": {"input_size": 3, "hidden_size": 4, "num_layers": 2, "bidirectional": True,
                               "batch_first": True, "dropout": 0.5, "dtype": "float32", "reset_after": False}}
    assert set(e) == set(m.parameters())
    for k, a in e.items():
        np.testing.assert_array_equal(a, m.parameters()[k])


def test_file_objects():
    m = model("lstm")
    buf = io.BytesIO()
    m.save(buf)
    buf.seek(0)
    same(m, rnncore.load(buf))


def test_overwrite_replaces_the_file(tmp_path):
    path = tmp_path / "m.npz"
    model("lstm").save(path)
    other = rnncore.LSTM(3, 4, num_layers=2, bidirectional=True, seed=1)
    other.save(path)
    same(other, rnncore.load(path))


def test_load_into_an_existing_model(tmp_path):
    src = model("gru_after", dtype=np.float64)
    path = tmp_path / "m.npz"
    src.save(path)
    dst = rnncore.GRU(3, 4, num_layers=2, bidirectional=True, reset_after=True, dtype=np.float64, seed=5,
                      batch_first=True)
    assert dst.load(path) is dst
    assert dst.batch_first is True                        # its own call settings stay
    for k, v in src.parameters().items():
        np.testing.assert_array_equal(dst.parameters()[k], v)


@pytest.mark.parametrize("other,match", [
    (lambda: rnncore.GRU(3, 4, num_layers=2, bidirectional=True, dtype=np.float64), "reset_after"),
    (lambda: rnncore.GRU(3, 4, num_layers=2, bidirectional=True, reset_after=True), "dtype"),
    (lambda: rnncore.GRU(3, 5, num_layers=2, bidirectional=True, reset_after=True, dtype=np.float64),
     "hidden_size"),
    (lambda: rnncore.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=np.float64), "does not fit"),
])
def test_load_into_a_different_model_changes_nothing(other, match, tmp_path):
    path = tmp_path / "m.npz"
    model("gru_after", dtype=np.float64).save(path)
    dst = other()
    before = dst.state_dict()
    with pytest.raises(ValueError, match=match):
        dst.load(path)
    for k, v in before.items():
        np.testing.assert_array_equal(dst.parameters()[k], v)


def test_truncated_files(tmp_path):
    path = tmp_path / "m.npz"
    model("lstm").save(path)
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 3, len(data) // 2, len(data) - 30, len(data) - 1):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="not a valid rnncore model file"):
            rnncore.load(bad)


def test_corrupted_bytes_are_caught_by_the_checksums(tmp_path):
    m = model("lstm")
    path = tmp_path / "m.npz"
    m.save(path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("W_hh_l1.npy")
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len           # the stored .npy: header, then data
    pos = start + info.file_size - 5
    before = np.frombuffer(bytes(data[start + info.file_size - 4 * 16 * 4:start + info.file_size]), np.float32)
    np.testing.assert_array_equal(before, m.parameters()["W_hh_l1"].ravel())   # really inside the data
    data[pos] ^= 0x40
    bad = tmp_path / "flip.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="Bad CRC-32 for file 'W_hh_l1.npy'"):
        rnncore.load(bad)


def valid_entries(variant="gru", **kw):
    m = model(variant, **kw)
    buf = io.BytesIO()
    m.save(buf)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def edited(meta_change=None, **arrays):
    e = valid_entries()
    if meta_change:
        meta = json.loads(str(e["__rnncore__"]))
        meta_change(meta)
        e["__rnncore__"] = np.array(json.dumps(meta))
    for k, v in arrays.items():
        if v is None:
            del e[k]
        else:
            e[k] = v
    return e


@pytest.mark.parametrize("arrays,match", [
    (edited(W_ih_l0=np.zeros((12, 4), np.float32)), "W_ih_l0.*shape \\(12, 4\\).*\\(12, 3\\)"),
    (edited(W_ih_l0=np.zeros((12, 3), np.float64)), "W_ih_l0.*float64"),
    (edited(W_ih_l0=np.zeros((12, 3), np.int32)), "W_ih_l0.*int32"),
    (edited(b_l1_reverse=None), "missing \\['b_l1_reverse'\\]"),
    (edited(extra=np.zeros(3, np.float32)), "unexpected \\['extra'\\]"),
    (edited(__rnncore__=None), "no __rnncore__"),
    (edited(__rnncore__=np.array("{not json")), "JSONDecodeError"),
    (edited(__rnncore__=np.zeros(3)), "not a JSON string"),
    (edited(lambda m: m.update(version=2)), "format version 2"),
    (edited(lambda m: m.update(format="other")), "not an rnncore header"),
    (edited(lambda m: m.update(type="Transformer")), "model type 'Transformer'"),
    (edited(lambda m: m["config"].update(num_layers=3)), "missing \\['W_hh_l2'"),
    (edited(lambda m: m["config"].update(hidden_size=-1)), "bad config"),
    (edited(lambda m: m["config"].update(hidden_size=10**6)), "more than the file holds"),   # nothing allocated
    (edited(lambda m: m["config"].update(num_layers=2.0)), "positive ints"),
    (edited(lambda m: m["config"].update(dtype="float16")), "dtype 'float16'"),
    (edited(lambda m: m["config"].update(nonlinearity="relu")), "config keys"),
    (edited(lambda m: m["config"].pop("reset_after")), "config keys"),
])
def test_mismatched_files(arrays, match, tmp_path):
    path = tmp_path / "m.npz"
    write(path, arrays)
    with pytest.raises(ValueError, match=match):
        rnncore.load(path)


def test_other_byte_order_loads(tmp_path):
    m = model("lstm", dtype=np.float64)
    e = valid_entries("lstm", dtype=np.float64)
    big = {k: (v if k == "__rnncore__" else v.astype(v.dtype.newbyteorder(">"))) for k, v in e.items()}
    assert big["W_ih_l0"].dtype.str == ">f8"
    path = tmp_path / "big.npz"
    write(path, big)
    loaded = rnncore.load(path)
    assert loaded.parameters()["W_ih_l0"].dtype.isnative
    same(m, loaded)


class Payload:
    def __reduce__(self):
        return (EXECUTED.append, ("executed",))


def test_pickled_content_is_never_executed(tmp_path):
    e = valid_entries()
    e["W_ih_l0"] = np.array([Payload()], dtype=object)
    path = tmp_path / "evil.npz"
    write(path, e)
    with pytest.raises(ValueError, match="not a valid rnncore model file"):
        rnncore.load(path)
    import pickle
    whole = tmp_path / "evil.pkl"
    whole.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match="not a valid rnncore model file"):
        rnncore.load(whole)
    assert EXECUTED == []


def test_other_files(tmp_path):
    npy = tmp_path / "a.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(ValueError, match="not an .npz archive"):
        rnncore.load(npy)
    txt = tmp_path / "a.txt"
    txt.write_text("hello")
    with pytest.raises(ValueError, match="not a valid rnncore model file"):
        rnncore.load(txt)
    with pytest.raises(FileNotFoundError):
        rnncore.load(tmp_path / "missing.npz")


def test_save_refuses_a_broken_model(tmp_path):
    m = model("lstm")
    m.parameters()["W_ih_l0"] = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="W_ih_l0"):
        m.save(tmp_path / "m.npz")
    assert not os.listdir(tmp_path)


def test_load_into_a_model_with_a_replaced_parameter_changes_nothing(tmp_path):
    path = tmp_path / "m.npz"
    model("lstm").save(path)
    dst = rnncore.LSTM(3, 4, num_layers=2, bidirectional=True, seed=3)
    before = dst.state_dict()
    dst.parameters()["W_hh_l1"] = np.zeros((1, 1), np.float32)
    with pytest.raises(ValueError, match="W_hh_l1"):
        dst.load(path)
    np.testing.assert_array_equal(dst.parameters()["W_ih_l0"], before["W_ih_l0"])


# ---- hostile files: nothing allocated that the file's bytes do not back ----------------------

def npy_bytes(a=None, header_only=None):
    """An entry's .npy bytes; header_only=(shape, dtype) gives a header announcing that, and no data."""
    buf = io.BytesIO()
    if header_only is None:
        np.lib.format.write_array(buf, np.asarray(a), allow_pickle=False)
    else:
        shape, dtype = header_only
        np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                   "fortran_order": False, "shape": shape})
    return buf.getvalue()


def meta_entry(type_, **config):
    cfg = dict(input_size=1, hidden_size=8, num_layers=1, bidirectional=False, batch_first=False, dropout=0.0,
               dtype="float32")
    cfg.update(config)
    return npy_bytes(np.array(json.dumps({"format": "rnncore", "version": 1, "type": type_, "config": cfg})))


def craft(path, entries, declare=None, method=zipfile.ZIP_STORED):
    """A zip of entries (name -> bytes); declare={name: (file_size, compress_size or None)} rewrites
    what the central directory says about an entry, leaving its bytes as they are."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in entries:
            z.writestr(name, data)
    data = bytearray(buf.getvalue())
    pos = data.find(b"PK\x01\x02")
    while pos >= 0 and declare:
        name_len = struct.unpack("<H", data[pos + 28:pos + 30])[0]
        name = bytes(data[pos + 46:pos + 46 + name_len]).decode()
        if name in declare:
            file_size, compress_size = declare[name]
            data[pos + 24:pos + 28] = struct.pack("<I", file_size)
            if compress_size is not None:
                data[pos + 20:pos + 24] = struct.pack("<I", compress_size)
        pos = data.find(b"PK\x01\x02", pos + 4)
    path.write_bytes(bytes(data))
    return path


def hostile_files(folder):
    """(file, what its ValueError says): small files declaring models of gigabytes."""
    big = 4 * 8192 * (1 + 8192 + 1) * 4          # LSTM(1, 8192) float32: 1 GiB of parameters
    lstm = meta_entry("LSTM", hidden_size=8192)
    one = npy_bytes(np.zeros((1, 1), np.float32))
    out = [
        # the directory declares 4 GB of data in a 1 KB file (how the first report's file got past the size check)
        (craft(folder / "declared.npz", [("__rnncore__.npy", lstm), ("W_ih_l0.npy", one)],
               declare={"W_ih_l0.npy": (0xFFFFFF00, None)}), "declares 4294967040 bytes but stores"),
        # ... and the stored size with it
        (craft(folder / "stored.npz", [("__rnncore__.npy", lstm), ("W_ih_l0.npy", one)],
               declare={"W_ih_l0.npy": (0xFFFFFF00, 0xFFFFFF00)}), "more than the file's"),
        # a million layers, honestly declared: refused before a name is listed
        (craft(folder / "layers.npz", [("__rnncore__.npy", meta_entry("RNN", hidden_size=1, num_layers=10**6,
                                                                     nonlinearity="tanh")), ("W_ih_l0.npy", one)]),
         "num_layers=1000000; a model file holds at most 1024"),
        # the right names, each header announcing its full shape, no data behind them, deflated so that the
        # declared sizes need not match stored bytes: each entry runs out where its real bytes end
        (craft(folder / "deflated.npz",
               [("__rnncore__.npy", lstm)] + [(f"{n}_l0.npy", npy_bytes(header_only=(s, np.float32)))
                                              for n, s in (("W_ih", (32768, 1)), ("W_hh", (32768, 8192)),
                                                           ("b", (32768,)))],
               declare={"W_hh_l0.npy": (128 + 32768 * 8192 * 4, None), "W_ih_l0.npy": (128 + 32768 * 4, None),
                        "b_l0.npy": (128 + 32768 * 4, None)}, method=zipfile.ZIP_DEFLATED), "ends after 0 of"),
    ]
    for path, _ in out:
        assert path.stat().st_size < 2048
    assert big > 2**30
    return out


# Peak resident memory of this process image: VmHWM (ru_maxrss would carry the parent's peak across exec).
PEAK = """
def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_hostile_files_are_refused_before_anything_is_allocated(tmp_path):
    """Each file is under 2 KB and declares a model of 1 GiB or a million layers; before, loading them took
    3 GB and 1.6 GB of memory. Peak resident memory over the whole run is measured in a fresh process."""
    import subprocess
    import sys
    files = hostile_files(tmp_path)
    code = f"""
import json, rnncore
{PEAK}
base = peak()
said = []
for path in {[str(p) for p, _ in files]!r}:
    try:
        rnncore.load(path)
        said.append("loaded")
    except ValueError as e:
        said.append(str(e))
print(json.dumps([peak() - base, said]))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    grew, said = json.loads(r.stdout.split("\n")[-2])
    assert grew < 32 * 2**20, f"peak resident memory grew by {grew} bytes loading files of under 2 KB"
    for (path, words), message in zip(files, said):
        assert words in message and len(message) < 1000, (path.name, message[:2000])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
@pytest.mark.skipif(os.environ.get("RNNCORE_SANITIZED") == "1",
                    reason="AddressSanitizer's quarantine and shadow memory make resident memory meaningless")
def test_loading_a_real_model_peaks_near_its_size(tmp_path):
    """The file's arrays become the model's parameters: no random initialisation, no second copy."""
    import subprocess
    import sys
    m = rnncore.LSTM(512, 1024, seed=0)                 # 6.3 million parameters, 25 MB in float32
    path = tmp_path / "big.npz"
    m.save(path)
    nbytes = m.num_parameters() * 4
    code = f"""
import numpy as np, rnncore
{PEAK}
base = peak()
m = rnncore.load({str(path)!r})
assert m.parameters()["W_hh_l0"].shape == (4096, 1024) and np.isfinite(m.parameters()["W_hh_l0"]).all()
print(peak() - base)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    grew = int(r.stdout.split()[-1])
    print(f"loading {nbytes} bytes of parameters: peak resident memory +{grew} bytes")
    assert grew < 1.5 * nbytes + 8 * 2**20, f"loading {nbytes} bytes of parameters took {grew} bytes at peak"


def test_limits_are_what_the_module_says(tmp_path):
    from rnncore import _io
    assert (_io.MAX_LAYERS, _io.MAX_HEADER_CHARS, _io.MAX_NPY_HEADER_BYTES) == (1024, 16384, 10000)
    ok = rnncore.RNN(1, 1, num_layers=1024, seed=0)
    ok.save(tmp_path / "ok.npz")
    same(ok, rnncore.load(tmp_path / "ok.npz"))
    with pytest.raises(ValueError, match="^num_layers: a model file holds at most 1024 layers"):
        rnncore.RNN(1, 1, num_layers=1025).save(tmp_path / "no.npz")
    assert not (tmp_path / "no.npz").exists()
    long = edited(lambda m: m.update(padding="x" * 16384))
    write(tmp_path / "long.npz", long)
    with pytest.raises(ValueError, match="not a JSON string of at most 16384 characters"):
        rnncore.load(tmp_path / "long.npz")


def test_compressed_files_load_and_other_methods_are_refused(tmp_path):
    e = valid_entries()
    np.savez_compressed(tmp_path / "small.npz", **e)
    same(model("gru"), rnncore.load(tmp_path / "small.npz"))
    with zipfile.ZipFile(tmp_path / "bz2.npz", "w", zipfile.ZIP_BZIP2) as z:
        for k, v in e.items():
            z.writestr(k + ".npy", npy_bytes(v))
    with pytest.raises(ValueError, match="compression method 12"):
        rnncore.load(tmp_path / "bz2.npz")


def test_fortran_order_entries_load(tmp_path):
    e = valid_entries("lstm")
    path = craft(tmp_path / "f.npz", [(k + ".npy", npy_bytes(v if v.ndim == 0 else np.asfortranarray(v)))
                                      for k, v in e.items()])
    loaded = rnncore.load(path)
    same(model("lstm"), loaded)
    assert all(a.flags.c_contiguous for a in loaded.parameters().values())


def test_duplicate_entries_are_refused(tmp_path):
    """A zip may name an entry twice; NumPy's reader took the last one silently."""
    e = valid_entries()
    entries = [(k + ".npy", npy_bytes(v)) for k, v in e.items()]
    entries.append(("W_hh_l0.npy", npy_bytes(np.zeros_like(e["W_hh_l0"]))))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # zipfile warns about the duplicate it writes
        path = craft(tmp_path / "twice.npz", entries)
    with zipfile.ZipFile(path) as z:
        assert [i.filename for i in z.infolist()].count("W_hh_l0.npy") == 2
    with pytest.raises(ValueError, match=r"entries named more than once \['W_hh_l0.npy'\]"):
        rnncore.load(path)
    twice_meta = [("__rnncore__.npy", npy_bytes(e["__rnncore__"]))] + entries[:-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = craft(tmp_path / "meta.npz", twice_meta)
    with pytest.raises(ValueError, match=r"more than once \['__rnncore__.npy'\]"):
        rnncore.load(path)


def test_error_messages_are_bounded(tmp_path):
    """A file naming 1024 layers but holding one lists a few names and counts the rest."""
    e = valid_entries("rnn_tanh", num_layers=1, bidirectional=False)
    meta = json.loads(str(e["__rnncore__"]))
    meta["config"]["num_layers"] = 1024
    e["__rnncore__"] = np.array(json.dumps(meta))
    for i in range(3000):
        e[f"junk_{i}"] = np.zeros(1, np.float32)
    e["x" * 5000] = np.zeros(1, np.float32)
    path = tmp_path / "many.npz"
    write(path, e)
    with pytest.raises(ValueError) as info:
        rnncore.load(path)
    message = str(info.value)
    assert len(message) < 1500, len(message)
    assert "missing ['W_hh_l1', " in message and "and 3061 more (3069 in all)" in message
    assert "unexpected ['junk_0', " in message and "and 2993 more (3001 in all)" in message
    m = rnncore.RNN(3, 4, num_layers=1000)
    with pytest.raises(ValueError) as info:
        m.load_state_dict({f"w{i}": np.zeros(1) for i in range(5000)})
    message = str(info.value)
    assert len(message) < 1000 and "and 2992 more (3000 in all)" in message and "(5000 in all)" in message

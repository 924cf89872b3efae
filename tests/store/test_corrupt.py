"""Damaged and foreign files: typed errors naming the path, damaged rows never served."""

import hashlib
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from store.errors import StoreCorruptError, StoreLockedError
from store.hdf5 import FeatureStore
from store.keys import content_key, fingerprint

SPEC = {"backbone": "fake", "corrupt": 1}
FP = fingerprint(SPEC)
DIM = 32


def build(path, n: int = 200, dtype: str = "float32"):
    keys = [content_key(f"c-{i}".encode()) for i in range(n)]
    vecs = np.random.default_rng(0).standard_normal((n, DIM)).astype(dtype)
    with FeatureStore(path) as fs:
        fs.namespace(FP, SPEC, dim=DIM, dtype=dtype).put_many(keys, vecs)
    return keys, vecs


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("content", [b"", b"not an hdf5 file at all\n" * 100,
                                     b"\x89HDF\r\n\x1a\n" + b"\x00" * 500])
@pytest.mark.parametrize("mode", ["r", "a"])
def test_garbage_and_empty_files_are_corrupt_and_untouched(tmp_path, content, mode):
    path = tmp_path / "bad.h5"
    path.write_bytes(content)
    with pytest.raises(StoreCorruptError, match=str(path)) as e:
        FeatureStore(path, mode)
    assert "move it aside" in str(e.value)
    assert path.read_bytes() == content  # never truncated, never "repaired"
    if mode == "a":
        FeatureStore(tmp_path / "other.h5").close()  # the failed open released its lock


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.95])
def test_truncated_copy_is_corrupt(tmp_path, fraction):
    real = tmp_path / "real.h5"
    build(real)
    with FeatureStore(real) as fs:
        assert fs.compact().total_dropped == 0  # no spare tail: every byte is HDF5's
    data = real.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: int(len(data) * fraction)])
    for mode in ("r", "a"):
        with pytest.raises(StoreCorruptError, match=str(cut)):
            FeatureStore(cut, mode)
    assert cut.read_bytes() == data[: int(len(data) * fraction)]


def test_foreign_hdf5_file_is_refused(tmp_path):
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    before = digest(path)
    with pytest.raises(StoreCorruptError, match="not an ssimcache feature store"):
        FeatureStore(path, "a")
    assert digest(path) == before


def _row_offset(path, row: int) -> int:
    with h5py.File(path, "r") as f:
        ds = f[FP]["vectors"]
        c = ds.chunks[0]
        info = ds.id.get_chunk_info_by_coord((row // c * c, 0))
        return info.byte_offset + (row % c) * DIM * ds.dtype.itemsize


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_flipped_bytes_are_caught_and_never_served(tmp_path, dtype):
    path = tmp_path / "f.h5"
    keys, vecs = build(path, dtype=dtype)
    bad = 70
    with open(path, "r+b") as f:  # flip bytes inside row 70's committed vector data
        off = _row_offset(path, bad) + 5
        f.seek(off)
        b = f.read(3)
        f.seek(off)
        f.write(bytes(x ^ 0x5A for x in b))
    with FeatureStore(path, "r") as fs:
        ns = fs.namespace(FP)
        with pytest.raises(StoreCorruptError, match=keys[bad]):
            ns.get(keys[bad])
        with pytest.raises(StoreCorruptError):
            ns.get_many([keys[0], keys[bad]])
        # Neighbours in the same chunk are still served, bit-exact.
        ok = [i for i in range(len(keys)) if i != bad]
        assert ns.get_many([keys[i] for i in ok]).tobytes() == vecs[ok].tobytes()
        assert ns.get(keys[bad + 1]).tobytes() == vecs[bad + 1].tobytes()
        problems = fs.verify()
        assert any(keys[bad] in p for p in problems), problems
    with FeatureStore(path, "a") as fs:
        other = {**SPEC, "other": 1}  # a healthy second namespace: listed with 0 dropped
        fs.namespace(fingerprint(other), other, dim=DIM).put_many(keys[:3], vecs[:3])
        result = fs.compact()  # drops the damaged row so extract recomputes it
        assert result.dropped == {FP: 1, fingerprint(other): 0} and result.total_dropped == 1
        assert "last_compact_dropped" not in vars(fs)  # returned, not left on the store
        ns = fs.namespace(FP)
        assert ns.missing(keys) == [keys[bad]]
        assert ns.get_many([keys[i] for i in ok]).tobytes() == vecs[ok].tobytes()
        assert fs.verify() == []


def test_zeroed_row_and_checksum_are_caught(tmp_path):
    """HDF5 can hand back zeros from a damaged file: a zero row with a zero checksum fails."""
    path = tmp_path / "f.h5"
    keys, _ = build(path)
    with h5py.File(path, "r+", locking=False) as f:  # a "valid" write of zeros, fletcher ok
        f[FP]["vectors"][5] = 0
        f[FP]["checksums"][5] = 0
    with FeatureStore(path, "r") as fs:
        with pytest.raises(StoreCorruptError):
            fs.namespace(FP).get(keys[5])
        assert any("row 5 " in p for p in fs.verify())


def test_opening_a_held_store_in_any_mode_never_alters_it(tmp_path):
    path = tmp_path / "held.h5"
    keys, vecs = build(path)
    code = ("import time; from store.hdf5 import FeatureStore; "
            f"fs = FeatureStore({str(path)!r}); fs.namespace({FP!r}); "
            "print('ready', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        before = digest(path)
        for _ in range(3):
            with pytest.raises(StoreLockedError):
                FeatureStore(path, "a")
            with FeatureStore(path, "r") as fs:
                assert fs.namespace(FP).get_many(keys).tobytes() == vecs.tobytes()
                assert fs.verify() == []
        assert digest(path) == before
    finally:
        holder.kill()
        holder.wait()


def test_import_store_does_not_load_torch_click_or_pipeline():
    code = ("import sys, store, store.hdf5, store.keys, store.lru; "
            "bad = [m for m in ('torch', 'click', 'pipeline') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_copy_of_healthy_store_verifies(tmp_path):
    path = tmp_path / "f.h5"
    build(path)
    shutil.copy(path, tmp_path / "copy.h5")
    with FeatureStore(tmp_path / "copy.h5", "r") as fs:
        assert fs.verify() == []


def _flip(path, row: int) -> None:
    with open(path, "r+b") as f:  # flip bytes inside the row's committed vector data
        off = _row_offset(path, row) + 5
        f.seek(off)
        b = f.read(3)
        f.seek(off)
        f.write(bytes(x ^ 0x5A for x in b))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_try_get_many_serves_good_rows_and_reports_the_damaged_one(tmp_path, dtype):
    path = tmp_path / "f.h5"
    keys, vecs = build(path, dtype=dtype)
    bad = 70
    _flip(path, bad)
    asked = list(range(65, 75))  # 10 keys around the damaged row, same chunk
    with FeatureStore(path, "r") as fs:
        ns = fs.namespace(FP)
        got = ns.try_get_many([keys[i] for i in asked])
        good = [i for i in asked if i != bad]
        assert got.ok.tolist() == [i != bad for i in asked]
        assert got.vectors[got.ok].tobytes() == vecs[good].tobytes()  # 9 exactly right
        assert np.isnan(got.vectors[~got.ok]).all() and got.vectors.dtype == np.dtype(dtype)
        assert list(got.failed) == [keys[bad]] and "checksum" in got.failed[keys[bad]]
        with pytest.raises(StoreCorruptError, match=keys[bad]):  # the default is unchanged
            ns.get_many([keys[i] for i in asked])
        # Absent, malformed and repeated keys are reported too; input order is kept.
        absent = content_key(b"never stored")
        got = ns.try_get_many([keys[bad], absent, keys[1], "nope", keys[bad]])
        assert got.ok.tolist() == [False, False, True, False, False]
        assert got.vectors[2].tobytes() == vecs[1].tobytes()
        assert set(got.failed) == {keys[bad], absent, "nope"}
        assert "not in namespace" in got.failed[absent] and "sha256" in got.failed["nope"]
        empty = ns.try_get_many([])
        assert empty.vectors.shape == (0, DIM) and empty.failed == {} and len(empty.ok) == 0


def test_try_get_many_reports_rows_whose_chunk_h5py_cannot_read(tmp_path, monkeypatch):
    import store.reader

    path = tmp_path / "f.h5"
    keys, vecs = build(path)
    _flip(path, 10)  # chunk 0: h5py reads it (from raw bytes), the checksum fails
    _flip(path, 70)  # chunk 1: h5py is made to fail outright, as on a damaged chunk index
    real = store.reader.read_rows_h5

    def flaky(ds, rows):
        if (rows // ds.chunks[0] == 1).any():
            raise OSError("Can't read data (wrong B-tree signature)")
        return real(ds, rows)

    monkeypatch.setattr(store.reader, "read_rows_h5", flaky)
    asked = [5, 10, 70, 71, 150]
    with FeatureStore(path, "r") as fs:
        got = fs.namespace(FP).try_get_many([keys[i] for i in asked])
    assert got.ok.tolist() == [True, False, False, True, True]
    assert got.vectors[got.ok].tobytes() == vecs[[5, 71, 150]].tobytes()
    assert "checksum" in got.failed[keys[10]]
    assert "cannot be read" in got.failed[keys[70]] and "B-tree" in got.failed[keys[70]]

"""store.hdf5.FeatureStore: round trips, namespaces, duplicates, mismatches, read-only mode."""

import subprocess
import sys

import h5py
import numpy as np
import pytest

from store.errors import (
    StoreError,
    StoreKeyError,
    StoreLockedError,
    StoreMismatchError,
    StoreNotFoundError,
)
from store.hdf5 import FeatureStore
from store.keys import content_key, fingerprint

SPEC = {"backbone": "fake", "size": 8}
FP = fingerprint(SPEC)
DIM = 16


def make(n: int, dim: int = DIM, seed: int = 0, dtype: str = "float32"):
    rng = np.random.default_rng(seed)
    keys = [content_key(f"{seed}-{i}".encode()) for i in range(n)]
    return keys, rng.standard_normal((n, dim)).astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_put_close_reopen_get_is_bit_exact(tmp_path, dtype):
    path = tmp_path / "f.h5"
    keys, vecs = make(300, dtype=dtype)
    with FeatureStore(path) as fs:
        ns = fs.namespace(FP, SPEC, dim=DIM, dtype=dtype)
        assert ns.put_many(keys[:100], vecs[:100]) == 100
        assert ns.put_many(keys[100:], vecs[100:]) == 200
    with FeatureStore(path, "r") as fs:
        ns = fs.namespace(FP)
        assert (ns.dim, ns.dtype, ns.spec, len(ns)) == (DIM, dtype, SPEC, 300)
        got = ns.get_many(keys)
        assert got.dtype == np.dtype(dtype) and got.tobytes() == vecs.tobytes()
        order = np.random.default_rng(1).permutation(300)
        assert ns.get_many([keys[i] for i in order]).tobytes() == vecs[order].tobytes()
        for i in (0, 63, 64, 299):
            assert ns.get(keys[i]).tobytes() == vecs[i].tobytes()
        assert ns.keys() == keys
    # The file is plain HDF5: h5py alone reads the same rows.
    with h5py.File(path, "r") as f:
        assert f[FP]["vectors"][:300].tobytes() == vecs.tobytes()
        assert f[FP].attrs["committed"] == 300


def test_duplicates_are_ignored_and_missing_is_ordered(tmp_path):
    keys, vecs = make(10)
    with FeatureStore(tmp_path / "f.h5") as fs:
        ns = fs.namespace(FP, SPEC, dim=DIM)
        assert ns.put_many(keys[:5] + keys[:2], np.concatenate([vecs[:5], vecs[:2] + 1])) == 5
        assert ns.put_many(keys[3:7], vecs[3:7] + 100) == 2  # 3, 4 already there
        assert len(ns) == 7
        assert ns.get(keys[3]).tobytes() == vecs[3].tobytes()  # first write wins
        asked = [keys[9], keys[0], keys[8], keys[9], "f" * 64]
        assert ns.missing(asked) == [keys[9], keys[8], "f" * 64]
        assert ns.missing([keys[1], "bad", keys[8]]) == ["bad", keys[8]]
        assert keys[0] in ns and ns.contains(keys[6]) and not ns.contains(keys[7])
        assert not ns.contains("not-a-key")
        assert ns.put_many([], np.zeros((0, DIM))) == 0


def test_get_and_get_many_of_absent_keys_raise(tmp_path):
    keys, vecs = make(4)
    with FeatureStore(tmp_path / "f.h5") as fs:
        ns = fs.namespace(FP, SPEC, dim=DIM)
        ns.put_many(keys[:3], vecs[:3])
        with pytest.raises(StoreKeyError, match=keys[3]):
            ns.get(keys[3])
        with pytest.raises(KeyError):  # StoreKeyError is a KeyError too
            ns.get_many([keys[0], keys[3]])
        assert ns.get_many([]).shape == (0, DIM)


def test_get_is_read_only_and_cached(tmp_path):
    keys, vecs = make(3)
    with FeatureStore(tmp_path / "f.h5", cache_items=10) as fs:
        ns = fs.namespace(FP, SPEC, dim=DIM)
        ns.put_many(keys, vecs)
        a = ns.get(keys[1])
        with pytest.raises(ValueError):
            a[0] = 1.0
        assert ns.get(keys[1]) is a
        s = fs.lru.stats()
        assert (s.hits, s.misses) == (1, 1)


def test_namespaces_are_separate(tmp_path):
    keys, vecs = make(5)
    spec2 = {**SPEC, "size": 16}
    with FeatureStore(tmp_path / "f.h5") as fs:
        fs.namespace(FP, SPEC, dim=DIM).put_many(keys, vecs)
        ns2 = fs.namespace(fingerprint(spec2), spec2, dim=8, dtype="float16")
        assert ns2.missing(keys) == keys
        ns2.put_many(keys[:2], vecs[:2, :8])
        assert fs.fingerprints() == sorted([FP, fingerprint(spec2)])
        assert fs.has_namespace(FP) and not fs.has_namespace("0" * 64)
        info = {d["fingerprint"]: d for d in fs.info()}
        assert info[FP]["rows"] == 5 and info[fingerprint(spec2)]["dtype"] == "float16"
        assert info[FP]["bytes"] > 5 * DIM * 4 and info[FP]["spec"] == SPEC


def test_mismatches_are_typed_errors(tmp_path):
    keys, vecs = make(2)
    with FeatureStore(tmp_path / "f.h5") as fs:
        ns = fs.namespace(FP, SPEC, dim=DIM)
        with pytest.raises(StoreMismatchError, match="shape"):
            ns.put_many(keys, vecs[:, :8])
        with pytest.raises(StoreMismatchError, match="NaN"):
            ns.put_many(keys, np.full((2, DIM), np.nan))
        with pytest.raises(StoreMismatchError, match="sha256"):
            ns.put_many(["abc", keys[1]], vecs)
        with pytest.raises(StoreMismatchError, match="16-d"):
            fs.namespace(FP, dim=32)
        with pytest.raises(StoreMismatchError, match="float32"):
            fs.namespace(FP, dtype="float16")
        with pytest.raises(StoreMismatchError, match="spec"):
            fs.namespace(FP, {"other": 1})
        with pytest.raises(StoreMismatchError, match="spec"):
            fs.namespace("1" * 64)  # creating needs a spec
        assert len(ns) == 0  # nothing half-written


def test_read_only_mode(tmp_path):
    path = tmp_path / "f.h5"
    with pytest.raises(StoreNotFoundError, match="does not exist"):
        FeatureStore(path, "r")
    assert not path.exists()
    keys, vecs = make(2)
    with FeatureStore(path) as fs:
        fs.namespace(FP, SPEC, dim=DIM).put_many(keys, vecs)
    with FeatureStore(path, "r") as fs:
        with pytest.raises(StoreNotFoundError, match="not in"):
            fs.namespace("0" * 64)
        ns = fs.namespace(FP)
        with pytest.raises(StoreError, match="read-only"):
            ns.put_many(keys, vecs)
        with pytest.raises(StoreError, match="read-only"):
            fs.prune([])


def test_second_writer_is_refused_naming_the_pid(tmp_path):
    path = tmp_path / "f.h5"
    code = ("import sys,time; from store.hdf5 import FeatureStore; "
            f"fs = FeatureStore({str(path)!r}); print('ready', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError, match=f"pid {holder.pid}"):
            FeatureStore(path, "a")
        with FeatureStore(path, "r") as fs:  # readers are never blocked
            assert fs.fingerprints() == []
    finally:
        holder.kill()
        holder.wait()
    with FeatureStore(path, "a") as fs:  # a dead holder leaves no stale lock
        assert fs.fingerprints() == []


def test_same_process_second_writer_is_refused(tmp_path):
    with FeatureStore(tmp_path / "f.h5"):
        with pytest.raises(StoreLockedError):
            FeatureStore(tmp_path / "f.h5")
    FeatureStore(tmp_path / "f.h5").close()


def test_threads_read_while_a_thread_writes(tmp_path):
    import threading

    keys, vecs = make(2000)
    errors = []
    with FeatureStore(tmp_path / "f.h5", cache_items=300) as fs:
        ns = fs.namespace(FP, SPEC, dim=DIM)
        ns.put_many(keys[:500], vecs[:500])

        def read(seed: int) -> None:
            rng = np.random.default_rng(seed)
            try:
                for _ in range(150):
                    idx = rng.choice(500, size=20)
                    assert ns.get_many([keys[i] for i in idx]).tobytes() == vecs[idx].tobytes()
                    i = int(idx[0])
                    assert ns.get(keys[i]).tobytes() == vecs[i].tobytes()
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        readers = [threading.Thread(target=read, args=(s,)) for s in range(3)]
        for t in readers:
            t.start()
        for lo in range(500, 2000, 100):  # the writer grows the namespace meanwhile
            ns.put_many(keys[lo:lo + 100], vecs[lo:lo + 100])
            ns.get(keys[lo])  # forces the chunk map to be rebuilt under the readers
        for t in readers:
            t.join()
        assert not errors, errors[0]
        assert ns.get_many(keys).tobytes() == vecs.tobytes()


def test_missing_folder_is_named_not_called_unwritable(tmp_path):
    path = tmp_path / "nodir" / "f.h5"
    with pytest.raises(StoreNotFoundError) as e:
        FeatureStore(path, mode="a")
    msg = str(e.value)
    assert f"{tmp_path / 'nodir'} does not exist" in msg and "mkdir -p" in msg
    assert "writable" not in msg and not (tmp_path / "nodir").exists()


def test_verify_reports_progress_over_every_row(tmp_path):
    keys, vecs = make(5000)
    with FeatureStore(tmp_path / "f.h5") as fs:
        fs.namespace(FP, SPEC, dim=DIM).put_many(keys, vecs)
        spec2 = {**SPEC, "size": 2}
        fs.namespace(fingerprint(spec2), spec2, dim=DIM).put_many(keys[:70], vecs[:70])
        seen: list[int] = []
        assert fs.verify(progress=seen.append) == []
        assert sum(seen) == 5070 and max(seen) <= 4096 + 64  # in blocks, not row by row

"""The store's format_version: read, written and compacted only where the rule allows."""

import hashlib

import h5py
import numpy as np
import pytest

from store.errors import StoreCorruptError, StoreError, StoreVersionError
from store.hdf5 import FeatureStore
from store.keys import content_key, fingerprint
from store.version import FORMAT_VERSION, parse_version

SPEC = {"backbone": "fake", "version": 1}
FP = fingerprint(SPEC)
DIM = 8
KEYS = [content_key(f"v-{i}".encode()) for i in range(10)]
VECS = np.arange(10 * DIM, dtype=np.float32).reshape(10, DIM)
MISSING = object()

# (format_version written into the file, what mode "r" does, what mode "a" does)
#   ok: opens and works; "no-write": reads, every write raises StoreVersionError;
#   an exception class: the open raises it.
CASES = [
    ("current (int 1)", np.int64(1), "ok", "ok"),
    ("current as '1.0'", "1.0", "ok", "ok"),
    ("current as b'1'", np.bytes_(b"1"), "ok", "ok"),
    ("newer minor '1.1'", "1.1", "no-write", StoreVersionError),
    ("newer major 2", np.int64(2), StoreVersionError, StoreVersionError),
    ("99", np.int64(99), StoreVersionError, StoreVersionError),
    ("'99.3'", "99.3", StoreVersionError, StoreVersionError),
    ("missing", MISSING, "no-write", StoreVersionError),
    ("string 'abc'", "abc", StoreCorruptError, StoreCorruptError),
    ("empty string", "", StoreCorruptError, StoreCorruptError),
    ("array [1, 0]", np.array([1, 0]), StoreCorruptError, StoreCorruptError),
    ("float 1.5", 1.5, StoreCorruptError, StoreCorruptError),
    ("zero", np.int64(0), StoreCorruptError, StoreCorruptError),
    ("negative", np.int64(-1), StoreCorruptError, StoreCorruptError),
    ("bool", np.bool_(True), StoreCorruptError, StoreCorruptError),
]


def build(path, version) -> str:
    """A store with rows, a second namespace and an incomplete group (a writer would drop
    it at open) whose format_version is `version` -> sha256 of the file."""
    with FeatureStore(path) as fs:
        fs.namespace(FP, SPEC, dim=DIM).put_many(KEYS, VECS)
        other = {**SPEC, "other": True}
        fs.namespace(fingerprint(other), other, dim=DIM).put_many(KEYS[:2], VECS[:2])
    with h5py.File(path, "r+", locking=False) as f:
        f.create_group("interrupted")  # no `committed` counter
        if version is MISSING:
            del f.attrs["format_version"]
        else:
            f.attrs["format_version"] = version
    return hashlib.sha256(path.read_bytes()).hexdigest()


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("name", "version", "read", "write"), CASES, ids=[c[0] for c in CASES])
def test_format_version_rule(tmp_path, name, version, read, write):
    path = tmp_path / "f.h5"
    before = build(path, version)
    if isinstance(read, type):
        with pytest.raises(read, match=str(path)):
            FeatureStore(path, "r")
    else:
        with FeatureStore(path, "r") as fs:
            assert fs.namespace(FP).get_many(KEYS).tobytes() == VECS.tobytes()
            assert fs.verify() == []
            if read == "no-write":  # every write names the version problem, not "read-only"
                for write_op in (lambda: fs.namespace(FP).put_many(KEYS[:1], VECS[:1]),
                                 lambda: fs.prune([]), fs.compact):
                    with pytest.raises(StoreVersionError, match="format"):
                        write_op()
    if isinstance(write, type):
        for _ in range(2):  # the refused open released its lock: the second is refused alike
            with pytest.raises(write, match=str(path)):
                FeatureStore(path, "a")
        assert digest(path) == before  # nothing dropped, repaired or rewritten
    else:
        with FeatureStore(path, "a") as fs:
            ns = fs.namespace(FP)
            ns.put_many([content_key(b"new")], np.ones((1, DIM)))
            assert fs.compact().total_dropped == 0
            assert fs.prune([FP]) != []
        with h5py.File(path, "r", locking=False) as f:  # compact keeps the version as it was
            assert parse_version(f.attrs["format_version"]) == FORMAT_VERSION


def test_newer_version_messages_name_file_versions_and_remedy(tmp_path):
    path = tmp_path / "f.h5"
    build(path, np.int64(99))
    for mode in ("r", "a"):
        with pytest.raises(StoreVersionError) as e:
            FeatureStore(path, mode)
        msg = str(e.value)
        assert str(path) in msg and "version 99" in msg and "writes 1" in msg
        assert "newer ssimcache" in msg and "pip install -U ssimcache" in msg
    path = tmp_path / "minor.h5"
    build(path, "1.1")
    with pytest.raises(StoreVersionError) as e:
        FeatureStore(path, "a")
    msg = str(e.value)
    assert "version 1.1" in msg and "ssimcache's 1 " in msg and "mode 'r'" in msg
    assert "pip install -U ssimcache" in msg
    build(tmp_path / "missing.h5", MISSING)
    with pytest.raises(StoreVersionError, match="no format_version attribute") as e:
        FeatureStore(tmp_path / "missing.h5", "a")
    assert "attrs['format_version'] = 1" in str(e.value)


def test_version_errors_are_store_errors_and_new_stores_are_current(tmp_path):
    assert issubclass(StoreVersionError, StoreError)
    with FeatureStore(tmp_path / "new.h5"):
        pass
    with h5py.File(tmp_path / "new.h5", "r", locking=False) as f:
        value = f.attrs["format_version"]
    assert value == 1 and np.issubdtype(type(value), np.integer)  # byte-compatible: int 1

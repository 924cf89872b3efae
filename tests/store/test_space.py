"""Disk space: each write reserves what it will allocate (no more), and says so when it can't."""

import os
import re
import resource
import signal

import h5py
import numpy as np
import pytest

import store.namespace
from store.errors import StoreFullError
from store.fileio import reserve
from store.hdf5 import FeatureStore
from store.keys import content_key, fingerprint
from store.layout import META_BYTES, META_BYTES_PER_CHUNK
from store.rows import rewrite_chunk_raw

SPEC = {"backbone": "fake", "space": 1}
FP = fingerprint(SPEC)
# One chunk of each dataset of a 2048-d float32 namespace, with its fletcher32 trailer:
# vectors (64, 2048) float32, keys (4096, 32) uint8, checksums (4096,) uint64.
CHUNKS_2048 = (64 * 2048 * 4 + 4) + (4096 * 32 + 4) + (4096 * 8 + 4)


def keys(lo: int, hi: int) -> list[str]:
    return [content_key(f"s-{i}".encode()) for i in range(lo, hi)]


def vectors(lo: int, hi: int, dim: int, dtype: str = "float32") -> np.ndarray:
    rows = np.arange(lo, hi)[:, None] % 5000  # distinct, and finite even as float16
    return (rows * 10 + np.arange(dim)[None, :] % 7).astype(dtype)


class Reservations:
    """Records every reservation put_many makes: (h5py file, HDF5's end of file, bytes)."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[tuple[h5py.File, int, int]] = []
        monkeypatch.setattr(store.namespace, "reserve", self._reserve)

    def _reserve(self, f: h5py.File, nbytes: int, action: str) -> None:
        self.calls.append((f, int(f.id.get_filesize()), nbytes))
        reserve(f, nbytes, action)

    def check_last(self) -> int:
        """HDF5 allocated nothing past what the last batch reserved -> bytes reserved."""
        f, end, nbytes = self.calls[-1]
        assert int(f.id.get_filesize()) <= end + nbytes, (end, nbytes, f.id.get_filesize())
        return nbytes


@pytest.mark.parametrize(("dim", "dtype", "sizes", "total"), [
    (2048, "float32", [1, 3, 8, 17, 64, 100], 1200),
    (16, "float16", [1, 50, 500, 5000], 20_000),  # past the 4096-row key chunks, B-tree grows
    (4, "float32", [100_000], 100_000),  # one batch of 1,563 new chunks: index metadata
])
def test_every_append_stays_inside_its_reservation(tmp_path, monkeypatch, dim, dtype, sizes,
                                                   total):
    spy = Reservations(monkeypatch)
    rng = np.random.default_rng(0)
    with FeatureStore(tmp_path / "f.h5") as fs:
        ns = fs.namespace(FP, SPEC, dim=dim, dtype=dtype)
        while len(ns) < total:
            n = len(ns)
            b = min(int(rng.choice(sizes)), total - n)
            ns.put_many(keys(n, n + b), vectors(n, n + b, dim, dtype))
            spy.check_last()
        assert ns.get_many(keys(0, total)).tobytes() == vectors(0, total, dim, dtype).tobytes()


def test_reservation_is_sized_from_the_rows(tmp_path, monkeypatch):
    spy = Reservations(monkeypatch)
    with FeatureStore(tmp_path / "f.h5") as fs:
        ns = fs.namespace(FP, SPEC, dim=2048)
        ns.put_many(keys(0, 8), vectors(0, 8, 2048))  # starts one chunk of each dataset
        assert spy.check_last() == META_BYTES + CHUNKS_2048 + 3 * META_BYTES_PER_CHUNK
        ns.put_many(keys(8, 16), vectors(8, 16, 2048))  # continues them, in place
        assert spy.check_last() == META_BYTES  # was 3,801,136 bytes (2x every touched chunk
        # counted one chunk too many, plus 1 MiB) for the same 8 x 2048 float32 rows


def test_a_chunk_left_unfiltered_by_a_repair_is_reserved_for(tmp_path, monkeypatch):
    path = tmp_path / "f.h5"
    with FeatureStore(path) as fs:
        fs.namespace(FP, SPEC, dim=2048).put_many(keys(0, 10), vectors(0, 10, 2048))
    with h5py.File(path, "r+", locking=False) as f:  # the state repair_torn_tail leaves
        for name in ("vectors", "keys", "checksums"):
            rewrite_chunk_raw(f[FP][name], 0, f[FP][name][:10])
        before = f[FP]["vectors"].id.get_chunk_info(0).byte_offset
    spy = Reservations(monkeypatch)
    with FeatureStore(path) as fs:
        ns = fs.namespace(FP)
        ns.put_many(keys(10, 15), vectors(10, 15, 2048))  # filtered again: 4 bytes longer
        assert spy.check_last() == META_BYTES + CHUNKS_2048  # all three move
    with h5py.File(path, "r", locking=False) as f:
        assert f[FP]["vectors"].id.get_chunk_info(0).byte_offset != before  # it did move
    with FeatureStore(path, "r") as fs:
        assert fs.namespace(FP).get_many(keys(0, 15)).tobytes() == vectors(0, 15, 2048).tobytes()
        assert fs.verify() == []


def _fill(path: str, limit: int, report_fd: int) -> None:
    """Forked child: under a file-size limit, append 8-row batches until the store is full."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG, not death by signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    fs = FeatureStore(path)
    ns = fs.namespace(FP)
    try:
        while True:
            n = len(ns)
            ns.put_many(keys(n, n + 8), vectors(n, n + 8, 2048))
    except StoreFullError as e:
        os.write(report_fd, f"{len(ns)}\n{e}".encode())
        fs.close()
        os._exit(0)
    os._exit(3)


def test_full_store_says_what_the_batch_needed_and_what_was_free(tmp_path):
    path = str(tmp_path / "full.h5")
    with FeatureStore(path) as fs:
        fs.namespace(FP, SPEC, dim=2048).put_many(keys(0, 30), vectors(0, 30, 2048))
        fs.compact()  # no spare tail left from earlier reservations
    limit = os.path.getsize(path) + (1 << 20)  # 1 MiB to spare: once not enough for 8 rows
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            _fill(path, limit, w)
        finally:
            os._exit(3)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    report = os.read(r, 10_000).decode()
    os.close(r)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, report
    rows, message = report.split("\n", 1)
    # 30 + 8k rows: the batch into a second 64-row chunk fitted, the one into a third not.
    assert int(rows) == 126, message
    assert "no space left" in message and path in message
    needed = int(re.search(r"needs ([\d,]+) bytes", message).group(1).replace(",", ""))
    assert needed == META_BYTES + 64 * 2048 * 4 + 4 + META_BYTES_PER_CHUNK, message
    free = re.search(r"([\d,]+) bytes are free on the disk of (\S+?)[;.]", message)
    assert free and free.group(2) == str(tmp_path), message
    st = os.statvfs(tmp_path)
    assert 0 <= int(free.group(1).replace(",", "")) <= st.f_blocks * st.f_frsize
    assert f"the file-size limit (ulimit -f) is {limit:,} bytes" in message
    with FeatureStore(path) as fs:  # committed rows are intact and the store takes more
        ns = fs.namespace(FP)
        assert ns.get_many(keys(0, 126)).tobytes() == vectors(0, 126, 2048).tobytes()
        assert fs.verify() == []
        ns.put_many(keys(126, 134), vectors(126, 134, 2048))

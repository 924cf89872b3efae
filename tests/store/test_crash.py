"""Crash safety: SIGKILLed writers, a full disk, and readers beside a live writer."""

import os
import random
import resource
import signal
import time

import numpy as np
import pytest

from store.errors import StoreFullError
from store.hdf5 import FeatureStore
from store.keys import content_key, fingerprint

SPEC = {"backbone": "fake", "crash": True}
FP = fingerprint(SPEC)
DIM = 64
# Enough rows that a writer never runs out before it is killed (60 runs x ~15k rows at most).
MAX_ROWS = 1_000_000
_KEYS: list[str] = []  # row i's key, made on first use: a test only needs the rows it writes


def keys(lo: int, hi: int) -> list[str]:
    """The keys of rows lo..hi-1 (the content key of "row-i"), the same in every process."""
    if len(_KEYS) < hi:
        _KEYS.extend(content_key(f"row-{i}".encode()) for i in range(len(_KEYS), hi))
    return _KEYS[lo:hi]


def expected(rows: np.ndarray) -> np.ndarray:
    """The vector row i must hold: deterministic, distinct per row, exact in float32."""
    return (rows[:, None] * 1000 + np.arange(DIM)[None, :]).astype(np.float32)


def writer(path: str, batch_sizes: list[int], pause: float = 0.0) -> None:
    """Append batches until the key list runs out (run in a forked child)."""
    with FeatureStore(path) as fs:
        ns = fs.namespace(FP, SPEC, dim=DIM)
        for size in batch_sizes:
            n = len(ns)
            if n + size > MAX_ROWS:
                break
            ns.put_many(keys(n, n + size), expected(np.arange(n, n + size)))
            if pause:
                time.sleep(pause)


def fork(fn, *args) -> int:
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 0
        try:
            fn(*args)
        except BaseException:  # noqa: BLE001
            code = 3
        os._exit(code)
    return pid


def check_exact(path: str, mode: str, verify: bool = True) -> int:
    """Open after a crash: every committed row is bit-exact and the store verifies clean."""
    with FeatureStore(path, mode) as fs:
        if not fs.has_namespace(FP):
            return 0
        ns = fs.namespace(FP)
        held = ns.keys()
        assert held == keys(0, len(held))  # committed rows are a prefix: nothing skipped
        assert ns.get_many(held).tobytes() == expected(np.arange(len(held))).tobytes()
        if verify:
            assert fs.verify() == []
        return len(ns)


@pytest.mark.slow  # 50 SIGKILLed writers
def test_kill_9_torture_never_loses_committed_rows(tmp_path):
    path = str(tmp_path / "torture.h5")
    rng = random.Random(1234)
    committed = 0
    kills = 0
    for _ in range(200):  # until 50 writers died mid-run (a writer that ends on its own: retry)
        if kills >= 50:
            break
        sizes = [rng.choice([1, 3, 17, 40, 64, 100]) for _ in range(400)]
        pid = fork(writer, path, sizes)
        time.sleep(rng.uniform(0.0, 0.12))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        kills += os.WIFSIGNALED(status)
        # A reader straight after the crash, then the next writer (which drops the torn batch).
        n_read = check_exact(path, "r", verify=False)
        n_write = check_exact(path, "a")
        assert n_read == n_write >= committed  # the counter never goes back
        committed = n_write
    assert kills >= 50
    assert committed > 0


def test_reader_reads_while_writer_writes(tmp_path):
    path = str(tmp_path / "live.h5")
    writer(path, [10])  # the namespace exists before the reader starts
    pid = fork(writer, path, [20] * 100, 0.002)
    try:
        seen = []
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            seen.append(check_exact(path, "r", verify=False))
            if seen[-1] >= 10 + 20 * 100:
                break
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert len(seen) >= 5
    assert seen == sorted(seen) and seen[-1] > seen[0]  # it saw the store grow


@pytest.mark.parametrize("races", [1, "always"])
def test_a_file_shrinking_under_the_reader_is_mapped_again_or_read_through_h5py(
        tmp_path, monkeypatch, races):
    """np.memmap reads the file's size, then maps it: a writer that truncates the file in
    between (HDF5 does when it flushes) makes mmap refuse. The reader maps it again, and after
    MAP_TRIES refusals reads through h5py; either way the rows come back exact (CI once failed
    here with "mmap length is greater than file size" beside a live writer)."""
    from store import rows

    path = str(tmp_path / "shrink.h5")
    writer(path, [40])
    real, calls = np.memmap, []
    limit = 1 if races == 1 else rows.MAP_TRIES

    def racing(*args, **kwargs):
        calls.append(1)
        if len(calls) <= limit:
            raise ValueError("mmap length is greater than file size")
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "memmap", racing)
    assert check_exact(path, "r", verify=False) == 40
    assert len(calls) == limit + (1 if races == 1 else 0)  # mapped on the retry / gave up


def _full_disk_child(path: str, limit: int, report_fd: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG, not death by signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    fs = FeatureStore(path)
    ns = fs.namespace(FP, SPEC, dim=DIM)
    try:
        while True:
            n = len(ns)
            ns.put_many(keys(n, n + 50), expected(np.arange(n, n + 50)))
    except StoreFullError as e:
        os.write(report_fd, f"{len(ns)}\n{e}".encode())
        fs.close()
        os._exit(0)


@pytest.mark.parametrize("headroom", [1_000, 400_000, 2_000_000])
def test_full_disk_keeps_committed_rows(tmp_path, headroom):
    path = str(tmp_path / "full.h5")
    writer(path, [30])  # 30 committed rows before the disk fills
    limit = os.path.getsize(path) + headroom
    r, w = os.pipe()
    pid = fork(_full_disk_child, path, limit, w)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    report = os.read(r, 10_000).decode()
    os.close(r)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, report
    n_child, message = report.split("\n", 1)
    assert "no space left" in message and path in message
    assert os.path.getsize(path) <= limit
    n = check_exact(path, "a")
    assert n == int(n_child) >= 30  # exactly what the writer last committed
    writer(path, [25])  # with space again the store takes more rows
    assert check_exact(path, "r") == n + 25


@pytest.mark.parametrize("dataset", ["keys", "vectors", "checksums"])
def test_append_torn_by_a_kill_leaves_committed_rows_readable_and_is_repaired(tmp_path, dataset):
    """A SIGKILL can cut the in-place rewrite of the last, partly filled chunk short (the
    kernel stops a write between pages): new row bytes land but the chunk's fletcher32 trailer
    stays old. Rebuild exactly that state, then reopen."""
    import h5py

    path = str(tmp_path / "torn.h5")
    writer(path, [10])  # 10 committed rows, all in the first (partial) chunk of each dataset
    with h5py.File(path, "r", locking=False) as f:
        info = f[FP][dataset].id.get_chunk_info(0)
    with open(path, "rb") as fh:  # the chunk's stored fletcher32 trailer before the append
        fh.seek(info.byte_offset + info.size - 4)
        old_trailer = fh.read(4)
    with h5py.File(path, "r+", locking=False) as f:  # the append, never committed
        g = f[FP]
        for name in ("vectors", "keys", "checksums"):
            g[name].resize(15, axis=0)
        g["vectors"][10:15] = expected(np.arange(10, 15))
        g["keys"][10:15] = np.frombuffer(b"".join(bytes.fromhex(k) for k in keys(10, 15)),
                                         np.uint8).reshape(5, 32)
        g["checksums"][10:15] = 12345
    with h5py.File(path, "r", locking=False) as f:
        info = f[FP][dataset].id.get_chunk_info(0)
    with open(path, "r+b") as fh:  # ... cut short before its last page: trailer stays old
        fh.seek(info.byte_offset + info.size - 4)
        fh.write(old_trailer)
    with h5py.File(path, "r", locking=False) as f, pytest.raises(OSError):
        f[FP][dataset][:10]  # plain HDF5 refuses the chunk now

    assert check_exact(path, "r", verify=False) == 10  # a reader: committed rows exact
    assert check_exact(path, "a") == 10  # the writer repairs; verify is clean
    with h5py.File(path, "r", locking=False) as f:  # and plain h5py reads it again
        assert f[FP][dataset].shape[0] == 10 and len(f[FP][dataset][:10]) == 10
    writer(path, [7])  # appending after the repair works and stays exact
    assert check_exact(path, "a") == 17

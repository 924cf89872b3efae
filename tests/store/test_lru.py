"""store.lru: bounds by items and bytes, counters, read-only values, thread safety."""

import threading

import numpy as np
import pytest

from store.lru import LRUCache


def vec(n: int = 4, fill: float = 1.0) -> np.ndarray:
    return np.full(n, fill, dtype=np.float32)  # n * 4 bytes


def test_evicts_least_recently_used_by_count():
    c = LRUCache(max_items=2, max_bytes=1 << 20)
    c.put("a", vec())
    c.put("b", vec())
    assert c.get("a") is not None  # "a" is now most recent
    c.put("c", vec())
    assert "b" not in c and "a" in c and "c" in c
    s = c.stats()
    assert (s.hits, s.misses, s.evictions, s.items) == (1, 0, 1, 2)


def test_evicts_by_bytes_and_skips_oversized_values():
    c = LRUCache(max_items=100, max_bytes=40)
    for k in range(3):
        c.put(k, vec(4))  # 16 bytes each: the third pushes out the first
    assert 0 not in c and len(c) == 2 and c.nbytes == 32
    c.put("huge", vec(100))  # larger than the whole budget: not cached, nothing evicted
    assert "huge" not in c and len(c) == 2


def test_counts_misses_and_refresh_does_not_double_count_bytes():
    c = LRUCache(max_items=10, max_bytes=1000)
    assert c.get("nope") is None
    c.put("a", vec(4))
    c.put("a", vec(8))
    assert c.nbytes == 32 and len(c) == 1
    assert c.stats().misses == 1


def test_values_become_read_only():
    c = LRUCache()
    v = vec()
    c.put("a", v)
    with pytest.raises(ValueError):
        c.get("a")[0] = 5.0


def test_zero_items_disables_cache():
    c = LRUCache(max_items=0)
    c.put("a", vec())
    assert c.get("a") is None


def test_threads_keep_bounds_and_counters_consistent():
    c = LRUCache(max_items=50, max_bytes=50 * 16)
    gets = 0
    lock = threading.Lock()

    def work(seed: int) -> None:
        nonlocal gets
        rng = np.random.default_rng(seed)
        for k in rng.integers(0, 200, 2000):
            if c.get(int(k)) is None:
                c.put(int(k), vec())
            with lock:
                gets += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = c.stats()
    assert s.hits + s.misses == gets
    assert s.items <= 50 and s.bytes == s.items * 16

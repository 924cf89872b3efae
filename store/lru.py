"""A thread-safe LRU bounded by item count and bytes, with hit/miss/eviction counters."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LRUStats:
    """A snapshot of the cache counters."""

    hits: int
    misses: int
    evictions: int
    items: int
    bytes: int


def _nbytes(value: Any) -> int:
    return int(getattr(value, "nbytes", 0) or 0)


class LRUCache:
    """Least-recently-used map; evicts oldest entries past `max_items` or `max_bytes`.

    Knows nothing of storage: values are anything with an optional `.nbytes` (numpy arrays).
    numpy arrays are made read-only on insert so a caller cannot alter what others get back.
    """

    def __init__(self, max_items: int = 100_000, max_bytes: int = 256 << 20) -> None:
        if max_items < 0 or max_bytes < 0:
            raise ValueError("LRU bounds must be >= 0 (0 disables the cache)")
        self.max_items = int(max_items)
        self.max_bytes = int(max_bytes)
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The cached value (now most recent), or `default` on a miss."""
        with self._lock:
            try:
                value = self._data[key]
            except KeyError:
                self._misses += 1
                return default
            self._data.move_to_end(key)
            self._hits += 1
            return value

    def put(self, key: Hashable, value: Any) -> None:
        """Insert or refresh `key`; a value larger than `max_bytes` is not cached."""
        size = _nbytes(value)
        if hasattr(value, "flags") and hasattr(value.flags, "writeable"):
            value.flags.writeable = False
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= _nbytes(old)
            if size > self.max_bytes or self.max_items == 0:
                return
            self._data[key] = value
            self._bytes += size
            while len(self._data) > self.max_items or self._bytes > self.max_bytes:
                _, evicted = self._data.popitem(last=False)
                self._bytes -= _nbytes(evicted)
                self._evictions += 1

    def clear(self) -> None:
        """Drop every entry; counters keep counting."""
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def stats(self) -> LRUStats:
        """Counters and current size."""
        with self._lock:
            return LRUStats(self._hits, self._misses, self._evictions, len(self._data),
                            self._bytes)

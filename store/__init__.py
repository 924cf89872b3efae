"""Feature storage: content keys, fingerprints, an LRU, and the HDF5 store (no torch here)."""

from store.errors import (
    StoreCorruptError,
    StoreError,
    StoreFullError,
    StoreKeyError,
    StoreLockedError,
    StoreMismatchError,
    StoreNotFoundError,
    StoreVersionError,
)

__all__ = [
    "StoreCorruptError",
    "StoreError",
    "StoreFullError",
    "StoreKeyError",
    "StoreLockedError",
    "StoreMismatchError",
    "StoreNotFoundError",
    "StoreVersionError",
]

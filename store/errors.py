"""Typed errors of the store layer; each message names the file and says what to do."""


class StoreError(Exception):
    """Base class of every store failure."""


class StoreNotFoundError(StoreError):
    """The store file (or a namespace in it) does not exist."""


class StoreCorruptError(StoreError):
    """The file is not an HDF5 store, is truncated, or a row fails its checksum."""


class StoreLockedError(StoreError):
    """Another process holds the store's write lock."""


class StoreMismatchError(StoreError):
    """Vectors do not match the namespace's dimension or dtype, or keys are malformed."""


class StoreFullError(StoreError):
    """A write failed for lack of space (disk full or size limit); committed rows are intact."""


class StoreKeyError(StoreError, KeyError):
    """A key is not in the namespace."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""

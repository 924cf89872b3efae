"""Typed errors of the store layer; each message names the file and says what to do."""

# What to tell the user when a file cannot be trusted.
CORRUPT_ADVICE = ("move it aside and re-run extract, or restore a backup "
                  "(`ssimcache store verify` lists what is damaged)")


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


class StoreVersionError(StoreError):
    """The store's format version is one this ssimcache cannot read, or may not write."""


class StoreKeyError(StoreError, KeyError):
    """A key is not in the namespace."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""

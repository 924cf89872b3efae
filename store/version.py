"""The store file's format version: what this code writes, and what it may read or write."""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from store.errors import CORRUPT_ADVICE, StoreCorruptError, StoreVersionError

FORMAT = "ssimcache-feature-store"
FORMAT_VERSION = (1, 0)  # (major, minor) of the layout this code writes
# Compatibility rule (`check_format`):
# - `format_version` is an integer N (meaning N.0) or a string "MAJOR.MINOR". Every store
#   written so far holds the integer 1, and this code keeps writing exactly that.
# - A minor bump only adds things an older reader may ignore; a major bump changes what is
#   there. So this code reads every MAJOR.x with its own major, and writes (mode "a", put_many,
#   prune, compact) only versions up to its own: a writer that predates 1.1 could leave a
#   1.1 store inconsistent with what 1.1 added.
# - No `format_version` at all: every ssimcache store has had one, so another tool rebuilt
#   the file (or dropped it). It is read as 1.0, the only layout there is, but not written.
_WRITTEN = {"format": FORMAT, "format_version": np.int64(FORMAT_VERSION[0])}
_DOTTED = re.compile(r"^([1-9][0-9]{0,5})(?:\.([0-9]{1,6}))?$")
_UPGRADE = "upgrade ssimcache (pip install -U ssimcache)"


def new_file_attrs() -> dict[str, object]:
    """The root attributes a new store file gets."""
    return dict(_WRITTEN)


def parse_version(value: object) -> tuple[int, int]:
    """A `format_version` attribute -> (major, minor); ValueError when it is not a version."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        if value >= 1:
            return int(value), 0
    elif isinstance(value, str) and (m := _DOTTED.match(value)):
        return int(m.group(1)), int(m.group(2) or 0)
    raise ValueError(f"{value!r} ({type(value).__name__})")


def _show(version: tuple[int, int]) -> str:
    return f"{version[0]}" if version[1] == 0 else f"{version[0]}.{version[1]}"


def check_format(path: str, attrs: Mapping[str, object], writing: bool) -> str | None:
    """Check a store file's root attributes against the compatibility rule above.

    Raises StoreCorruptError when the file is not a store or its version is not a version,
    and StoreVersionError when this code cannot read it, or cannot write it and `writing`.
    Returns why writes must be refused (a message) when reading is fine but writing is not,
    else None.
    """
    fmt = attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode("utf-8", "replace")
    if fmt != FORMAT:
        raise StoreCorruptError(
            f"{path} is an HDF5 file but not an ssimcache feature store (no "
            f"'format' attribute {FORMAT!r}); pass another path, or move it aside")
    ours = (f"this ssimcache reads format {FORMAT_VERSION[0]}.x and writes "
            f"{_show(FORMAT_VERSION)}")
    if "format_version" not in attrs:
        refusal = (f"{path} has no format_version attribute (every ssimcache store has one; "
                   f"another tool must have rebuilt it): it is read as format "
                   f"{_show(FORMAT_VERSION)} but not written ({ours}). Open it read-only "
                   "(mode 'r'); if you know it is a version-1 store, set the attribute with "
                   "h5py (f.attrs['format_version'] = 1) to write to it")
    else:
        try:
            version = parse_version(attrs["format_version"])
        except ValueError as e:
            raise StoreCorruptError(
                f"{path} has format_version {e}, which is not a store format version "
                f"(an integer or 'MAJOR.MINOR'): {CORRUPT_ADVICE}") from None
        if version[0] > FORMAT_VERSION[0]:  # (no major below 1 exists, so none is older)
            raise StoreVersionError(
                f"{path} has store format version {_show(version)}, which this ssimcache "
                f"cannot read ({ours}): it was written by a newer ssimcache; {_UPGRADE} to "
                "open it")
        if version <= FORMAT_VERSION:
            return None
        refusal = (f"{path} has store format version {_show(version)}, newer than this "
                   f"ssimcache's {_show(FORMAT_VERSION)} ({ours}): it can be read (mode 'r') "
                   f"but not written, since an older writer could break what "
                   f"{_show(version)} added; {_UPGRADE} to write to it")
    if writing:
        raise StoreVersionError(refusal)
    return refusal

"""A labels CSV as text records with line numbers; malformed files are LabelsErrors, not crashes.

Both the label writer (its header, the paths already labelled) and the training reader
(`pipeline.train.labels_csv`) read through `LabelsFile`, so they agree on one decoding rule:
UTF-8 (a spreadsheet's byte-order mark dropped), and bytes that are not UTF-8 kept as surrogate
escapes (`pipeline.atomic.PATH_ERRORS`), so a file name that is not UTF-8, written by `label`,
reads back as the same name. Elsewhere such bytes mean the file is in another encoding
(Latin-1, ...): `not_utf8` says so with the byte offset.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path

from pipeline.atomic import ENCODING, PATH_ERRORS
from pipeline.errors import LabelsError
from pipeline.images.inputs import UnreadableInput, check_regular_file, display_path

_BOM = b"\xef\xbb\xbf"


class LabelsFile:
    """The text of a labels CSV, read whole; `records()` yields (line, cells)."""

    def __init__(self, csv_path: str | os.PathLike) -> None:
        self.path = Path(csv_path)
        self.name = display_path(self.path)  # for messages: the terminal sees no raw bytes
        try:
            check_regular_file(self.path)  # a FIFO or a device named as the CSV must not hang
            raw = self.path.read_bytes()
        except (UnreadableInput, OSError) as e:
            reason = e.reason if isinstance(e, UnreadableInput) else e.strerror
            raise LabelsError(f"cannot read labels file {self.name}: {reason}") from None
        raw = raw[len(_BOM):] if raw.startswith(_BOM) else raw
        nul = raw.find(b"\0")
        if nul >= 0:
            raise LabelsError(
                f"{self.name}:{_line_of(raw, nul)}: NUL byte at byte offset {nul}; a "
                "labels CSV is UTF-8 text (a file saved as UTF-16 'Unicode text' looks like "
                "this): save it as CSV UTF-8")
        self._raw = raw
        self.text = raw.decode(ENCODING, PATH_ERRORS)

    def records(self) -> Iterator[tuple[int, list[str]]]:
        """(line, cells) per CSV record; `line` is the 1-based line where the record ends."""
        reader = csv.reader(io.StringIO(self.text, newline=""))
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                limit = csv.field_size_limit()
                why = (f"a field is longer than {limit:,} characters (a quote that is never "
                       "closed swallows the lines after it)" if "field limit" in str(e)
                       else f"not valid CSV ({e})")
                raise LabelsError(f"{self.name}:{reader.line_num}: {why}; fix the line") from None
            yield reader.line_num, cells

    def not_utf8(self, line: int, what: str) -> LabelsError:
        """The error for `what` on `line` holding bytes that are not UTF-8."""
        try:
            self._raw.decode(ENCODING)
            offset, byte = -1, 0
        except UnicodeDecodeError as e:
            offset, byte = e.start, self._raw[e.start]
        first = (f" (the first, 0x{byte:02x}, at byte offset {offset}, line "
                 f"{_line_of(self._raw, offset)})" if offset >= 0 else "")
        return LabelsError(f"{self.name}:{line}: {what} is not UTF-8{first}; the file looks "
                           "like another encoding (Latin-1, Windows-1252): save it as UTF-8")


def _line_of(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


def has_foreign_bytes(text: str) -> bool:
    """True when `text` carries bytes that were not UTF-8 (surrogate escapes)."""
    return any("\udc80" <= c <= "\udcff" for c in text)

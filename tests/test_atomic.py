"""pipeline.atomic: outputs appear whole or not at all, readable by others."""

import csv
import io
import os
import stat
from pathlib import Path

import pytest

from pipeline.atomic import (
    ENCODING,
    PATH_ERRORS,
    atomic_path,
    atomic_write_text,
    csv_line,
    write_failure_report,
)


def test_success_replaces_the_target_with_mode_0644(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644
    assert os.listdir(target.parent) == ["out.txt"]  # no temp file left


def test_failure_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "ckpt.bin"
    target.write_bytes(b"committed")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"committed"
    assert os.listdir(tmp_path) == ["ckpt.bin"]


def test_failure_report_is_a_path_reason_csv(tmp_path):
    out = write_failure_report(tmp_path / "fails.csv", [("a, b.png", "truncated"),
                                                         (tmp_path / "c.png", 'bad "x"')])
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["path", "reason"], ["a, b.png", "truncated"],
                    [str(tmp_path / "c.png"), 'bad "x"']]


ODD = ["cr\rname.png", "nl\nname.png", "crlf\r\nname.png", "a, b.png", 'q"uote.png',
       " lead.png", os.fsdecode(b"\xff\xfe.png")]


@pytest.mark.parametrize("name", ODD)
def test_csv_line_and_failure_report_round_trip_any_name(tmp_path, name):
    # Each record is one row on reading, whatever the name holds: a bare CR used to go out
    # unquoted and split the row in two.
    line = csv_line([name, "1"])
    assert line.endswith("\n") and not line.endswith("\r\n")
    assert list(csv.reader(io.StringIO(line, newline=""))) == [[name, "1"]]
    out = write_failure_report(tmp_path / "r" / "fails.csv", [(tmp_path / name, "why")])
    with open(out, newline="", encoding=ENCODING, errors=PATH_ERRORS) as f:
        rows = list(csv.reader(f))
    assert rows == [["path", "reason"], [str(tmp_path / name), "why"]]


def test_text_outputs_keep_the_bytes_of_non_utf8_names(tmp_path):
    name = os.fsdecode(b"\xff.png")
    atomic_write_text(tmp_path / "new" / "a.txt", f"see {name}\n")  # missing folder: created
    assert (tmp_path / "new" / "a.txt").read_bytes() == b"see \xff.png\n"
    out = write_failure_report(tmp_path / "fails.csv", [(Path(name), "why")])
    assert out.read_bytes() == b"path,reason\n\xff.png,why\n"

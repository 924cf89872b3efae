"""pipeline.atomic: outputs appear whole or not at all, readable by others."""

import csv
import os
import stat

import pytest

from pipeline.atomic import atomic_path, atomic_write_text, write_failure_report


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

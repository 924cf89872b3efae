"""Tests for pipeline.labels.writer: appending label rows; failure reports."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.atomic import write_failure_report as write_report
from pipeline.errors import LabelsError
from pipeline.labels.definition import Label
from pipeline.labels.writer import LabelWriter, append_labels, existing_paths, labels_lock
from pipeline.train.labels_csv import read_labels

REPO = Path(__file__).resolve().parents[2]


def test_append_labels_header_once_relative_paths(tmp_path):
    out = tmp_path / "sub" / "labels.csv"
    img = tmp_path / "images" / "a.png"
    append_labels(out, [(img, Label(0.5, 100))], "fam")
    append_labels(out, [(img.with_name("b.png"), Label(-0.25, 100))], "fam2")
    lines = out.read_text().splitlines()
    assert lines == ["path,ssim,svg_bytes,family", "../images/a.png,0.500000,100,fam",
                     "../images/b.png,-0.250000,100,fam2"]
    rows = read_labels(out, check_files=False)
    assert rows[0].path.resolve() == img.resolve() and rows[1].ssim == -0.25
    assert rows[0].svg_bytes == 100
    assert existing_paths(out) == {"../images/a.png", "../images/b.png"}


def test_append_to_file_without_final_newline(tmp_path):
    out = tmp_path / "labels.csv"
    out.write_text("path,ssim,family\nx.png,0.9,f")  # hand-edited, no final newline
    append_labels(out, [(tmp_path / "y.png", Label(0.8, 100))], "f")
    rows = read_labels(out, check_files=False)
    assert [(r.ssim, r.svg_bytes) for r in rows] == [(0.9, None), (0.8, 100)]


def test_report_is_written_atomically(tmp_path):
    report = tmp_path / "fails.csv"
    write_report(report, [(Path("a.png"), "bad, really")])
    with open(report, newline="") as f:
        assert list(csv.reader(f)) == [["path", "reason"], ["a.png", "bad, really"]]
    assert [p.name for p in tmp_path.iterdir()] == ["fails.csv"]  # no temp file left


def test_existing_csv_with_bom_and_other_column_order(tmp_path):
    """A spreadsheet's export: byte-order mark, columns in its own order."""
    out = tmp_path / "labels.csv"
    out.write_bytes("family,path,ssim\nf,x.png,0.9\n".encode("utf-8-sig"))
    assert existing_paths(out) == {"x.png"}  # the path column, not the first one
    append_labels(out, [(tmp_path / "y.png", Label(0.8, 100))], "g")
    assert out.read_text(encoding="utf-8-sig").splitlines()[-1] == "g,y.png,0.800000,100"
    with open(out, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    assert [(r["path"], r["ssim"], r["svg_bytes"], r["family"]) for r in rows] == [
        ("x.png", "0.9", "", "f"), ("y.png", "0.800000", "100", "g")]
    # ... and the usual order with a BOM: the header is recognised, no second header written
    plain = tmp_path / "plain.csv"
    plain.write_bytes("path,ssim,family\nx.png,0.9,f\n".encode("utf-8-sig"))
    assert existing_paths(plain) == {"x.png"}
    append_labels(plain, [(tmp_path / "y.png", Label(0.8, 100))], "f")
    assert plain.read_text(encoding="utf-8-sig").count("path,ssim") == 1


def test_csv_without_path_column_is_refused(tmp_path):
    out = tmp_path / "labels.csv"
    out.write_text("file,score\nx.png,0.9\n")
    with pytest.raises(LabelsError, match=r"labels\.csv:1: .*lacks 'path'"):
        existing_paths(out)
    with pytest.raises(LabelsError):
        append_labels(out, [(tmp_path / "y.png", Label(0.8, 100))], "f")
    assert out.read_text() == "file,score\nx.png,0.9\n"


def test_label_writer_puts_each_row_on_disk_before_returning(tmp_path):
    out = tmp_path / "labels.csv"
    with LabelWriter(out, "f") as writer:
        writer.write(tmp_path / "a.png", Label(0.5, 123))
        # read by another handle while the writer is still open: nothing held in a buffer
        assert out.read_text() == "path,ssim,svg_bytes,family\na.png,0.500000,123,f\n"
        writer.write(tmp_path / "b.png", Label(0.25, 7))
        assert out.read_text().endswith("b.png,0.250000,7,f\n")
    assert writer.written == 2


def test_csv_from_before_svg_bytes_gains_the_column_and_keeps_its_rows(tmp_path):
    out = tmp_path / "labels.csv"
    out.write_text("path,ssim,family\nx.png,0.9,f\n")
    append_labels(out, [(tmp_path / "y.png", Label(0.8, 321))], "f")
    assert out.read_text().splitlines() == ["path,ssim,svg_bytes,family", "x.png,0.9,,f",
                                            "y.png,0.800000,321,f"]


@pytest.mark.parametrize("cell", ["0", "-3", "1.5", "lots", "١٢"])
def test_bad_svg_bytes_cell_names_the_line(tmp_path, cell):
    out = tmp_path / "labels.csv"
    out.write_text(f"path,ssim,svg_bytes\nx.png,0.9,10\ny.png,0.8,{cell}\n")
    with pytest.raises(LabelsError, match=r"labels\.csv:3: svg_bytes"):
        read_labels(out, check_files=False)


ODD = ["cr\rname.png", "nl\nname.png", "a, b.png", 'q"uote.png', " lead.png",
       os.fsdecode(b"\xff\xfe.png")]


def test_odd_names_round_trip_through_the_labels_csv(tmp_path):
    """Written by the writer, read back by `existing_paths` (a rerun appends nothing) and by
    `read_labels` (each row names its existing file, bytes and all)."""
    for name in ODD:
        (tmp_path / name).write_bytes(b"x")
    out = tmp_path / "labels.csv"
    append_labels(out, [(tmp_path / n, Label(0.5, 10)) for n in ODD], "f")
    assert existing_paths(out) >= set(ODD)
    rows = read_labels(out)  # checks that every file exists
    assert [r.path for r in rows] == [tmp_path / n for n in ODD]
    assert b"\xff\xfe.png" in out.read_bytes()  # the name's own bytes, not an escape


def test_out_that_is_not_a_regular_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / "labels.csv")  # appending to it would block forever
    with pytest.raises(LabelsError, match="is a FIFO"):
        append_labels(tmp_path / "labels.csv", [(tmp_path / "a.png", Label(0.5, 1))], "f")


def test_a_second_label_run_on_one_csv_fails_naming_the_first(tmp_path):
    """Two processes: this one holds the lock as a running `label` does; the CLI's run fails
    at once, naming this pid, and appends nothing."""
    out = tmp_path / "new" / "labels.csv"
    (tmp_path / "a.png").write_bytes(b"x")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "pipeline", "label", str(tmp_path / "a.png"), "--out", str(out),
           "--workers", "1", "--no-progress"]
    with labels_lock(out):
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 1, res.stderr
        assert f"being written by another `ssimcache label` run (pid {os.getpid()}" in res.stderr
        assert not out.exists()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "1 failed" in res.stdout, res.stderr  # the lock is free again


def test_lock_is_released_when_the_run_raises(tmp_path):
    out = tmp_path / "labels.csv"
    with pytest.raises(RuntimeError), labels_lock(out):
        raise RuntimeError("interrupted")
    with labels_lock(out):
        pass

"""Tests for pipeline.labels_write: appending label rows and writing failure reports."""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline.atomic import write_failure_report as write_report
from pipeline.labels_csv import read_labels
from pipeline.labels_write import append_labels, existing_paths


def test_append_labels_header_once_relative_paths(tmp_path):
    out = tmp_path / "sub" / "labels.csv"
    img = tmp_path / "images" / "a.png"
    append_labels(out, [(img, 0.5)], "fam")
    append_labels(out, [(img.with_name("b.png"), -0.25)], "fam2")
    lines = out.read_text().splitlines()
    assert lines == ["path,ssim,family", "../images/a.png,0.500000,fam",
                     "../images/b.png,-0.250000,fam2"]
    rows = read_labels(out, check_files=False)
    assert rows[0].path.resolve() == img.resolve() and rows[1].ssim == -0.25
    assert existing_paths(out) == {"../images/a.png", "../images/b.png"}


def test_append_to_file_without_final_newline(tmp_path):
    out = tmp_path / "labels.csv"
    out.write_text("path,ssim,family\nx.png,0.9,f")  # hand-edited, no final newline
    append_labels(out, [(tmp_path / "y.png", 0.8)], "f")
    assert [r.ssim for r in read_labels(out, check_files=False)] == [0.9, 0.8]


def test_report_is_written_atomically(tmp_path):
    report = tmp_path / "fails.csv"
    write_report(report, [(Path("a.png"), "bad, really")])
    with open(report, newline="") as f:
        assert list(csv.reader(f)) == [["path", "reason"], ["a.png", "bad, really"]]
    assert [p.name for p in tmp_path.iterdir()] == ["fails.csv"]  # no temp file left

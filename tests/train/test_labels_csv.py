"""Tests for pipeline.train.labels_csv: hostile CSV files are LabelsErrors; the duplicate rule."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.errors import LabelsError
from pipeline.train.labels_csv import LabelRow, merge_duplicates, read_labels

HUGE = "a" * 140_000  # over the csv module's 131,072-character field limit

# (id, file bytes, LabelsError pattern: the file name, the line, what to do)
BAD = [
    ("huge-field", f"path,ssim\n{HUGE}.png,0.5\n".encode(),
     r"labels\.csv:2: a field is longer than 131,072 characters"),
    ("unclosed-quote", b'path,ssim\n"a.png,0.5\n' + b"b.png,0.5\n" * 20_000,
     r"labels\.csv:\d+: a field is longer than 131,072 characters \(a quote"),
    ("latin-1-family", "path,ssim,family\na.png,0.5,Caf\u00e9\n".encode("latin-1"),
     r"labels\.csv:2: field 3 is not UTF-8 \(the first, 0xe9, at byte offset 30, line 2\); "
     r".*save it as UTF-8"),
    ("latin-1-path", "path,ssim\nlogo_\u00e9.png,0.5\n".encode("latin-1"),
     r"labels\.csv:2: the path is not UTF-8 .*byte offset 15.*save it as UTF-8"),
    ("latin-1-header", "chemin\u00e9,path,ssim\na,b.png,0.5\n".encode("latin-1"),
     r"labels\.csv:1: the header is not UTF-8"),
    ("nul", b"path,ssim\na.png,0.5\nb\0.png,0.5\n",
     r"labels\.csv:3: NUL byte at byte offset 21.*save it as CSV UTF-8"),
    ("utf-16", "path,ssim\na.png,0.5\n".encode("utf-16"), r"labels\.csv:1: NUL byte"),
    ("bom-header-only", b"\xef\xbb\xbfpath,ssim\r\n", r"labels\.csv: no labelled rows"),
    ("empty", b"", r"labels\.csv: the file is empty"),
    ("underscore", b"path,ssim\na.png,0_1\n", r"labels\.csv:2: ssim value '0_1' is not a number"),
    ("nan", b"path,ssim\na.png,nan\n", r"labels\.csv:2: ssim value 'nan' is not a number"),
    ("other-digits", "path,ssim\na.png,\u0660.\u0665\n".encode(), r"labels\.csv:2: ssim value"),
    ("hex", b"path,ssim\na.png,0x1\n", r"labels\.csv:2: ssim value '0x1' is not a number"),
    ("out-of-range", b"path,ssim\na.png,1.5e0\n", r"labels\.csv:2: ssim value 1.5e0 is outside"),
]


@pytest.mark.parametrize("body, pattern", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_hostile_csv_is_a_labels_error_naming_file_and_line(tmp_path, body, pattern):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "labels.csv").write_bytes(body)
    with pytest.raises(LabelsError, match=pattern):
        read_labels(tmp_path / "labels.csv")


@pytest.mark.parametrize("cell, value", [("0.5", 0.5), (" .25 ", 0.25), ("+1", 1.0),
                                         ("-5e-1", -0.5), ("1.", 1.0), ("8.5E-1", 0.85)])
def test_plain_numbers_are_read(tmp_path, cell, value):
    (tmp_path / "labels.csv").write_text(f"path,ssim\na.png,{cell}\n")
    assert read_labels(tmp_path / "labels.csv", check_files=False)[0].ssim == value


def test_crlf_bom_and_quoted_odd_names_work(tmp_path):
    name = "cr\rname.png"
    (tmp_path / name).write_bytes(b"x")
    (tmp_path / "b.png").write_bytes(b"x")
    body = '\ufeffpath,ssim,family\r\n"cr\rname.png",0.5,f\r\nb.png,0.25,g\r\n'
    (tmp_path / "labels.csv").write_bytes(body.encode())
    rows = read_labels(tmp_path / "labels.csv")
    assert [(r.path.name, r.ssim, r.family) for r in rows] == [(name, 0.5, "f"),
                                                               ("b.png", 0.25, "g")]


def test_a_path_that_is_not_utf8_reads_back_when_the_file_exists(tmp_path):
    name = os.fsdecode(b"logo_\xe9.png")  # a Latin-1 file name on a Linux disk
    (tmp_path / name).write_bytes(b"x")
    (tmp_path / "labels.csv").write_bytes(b"path,ssim\nlogo_\xe9.png,0.5\n")
    assert read_labels(tmp_path / "labels.csv")[0].path == tmp_path / name


@pytest.mark.parametrize("make, reason", [
    (lambda p: os.mkfifo(p), "is a FIFO"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: os.symlink(p.name, p), "symlink loop"),
])
def test_a_labelled_path_that_is_not_a_regular_file_says_what_it_is(tmp_path, make, reason):
    make(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("path,ssim\na.png,0.5\n")
    with pytest.raises(LabelsError, match=rf"labels\.csv:2: image a\.png .*{reason}"):
        read_labels(tmp_path / "labels.csv")


def test_labels_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "labels.csv")
    with pytest.raises(LabelsError, match="is a FIFO"):
        read_labels(tmp_path / "labels.csv")


# -- duplicates ------------------------------------------------------------------------------

def test_same_path_same_label_twice_is_one_row(tmp_path):
    (tmp_path / "labels.csv").write_text("path,ssim\na.png,0.5\n./a.png,0.50\nb.png,0.5\n")
    rows = read_labels(tmp_path / "labels.csv", check_files=False)
    assert [(r.path.name, r.line) for r in rows] == [("a.png", 2), ("b.png", 4)]


def _row(name: str, ssim: float, line: int) -> LabelRow:
    return LabelRow(path=Path(name), ssim=ssim, family=None, line=line)


DUPS = [
    # (id, rows, keys, expected (name, ssim) rows, warned lines)
    ("same-path-two-labels", [_row("a.png", 0.5, 2), _row("a.png", 0.7, 5)], ["k", "k"],
     [("a.png", 0.6)], [2, 5]),
    ("two-copies-two-labels", [_row("a.png", 0.2, 2), _row("b.png", 0.4, 3),
                               _row("c.png", 0.9, 4)], ["k", "k", "z"],
     [("a.png", 0.3), ("c.png", 0.9)], [2, 3]),
    ("two-copies-one-label", [_row("a.png", 0.2, 2), _row("b.png", 0.2, 3)], ["k", "k"],
     [("a.png", 0.2), ("b.png", 0.2)], []),
    ("no-duplicates", [_row("a.png", 0.2, 2), _row("b.png", 0.4, 3)], ["k", "z"],
     [("a.png", 0.2), ("b.png", 0.4)], []),
]


@pytest.mark.parametrize("rows, keys, expected, lines", [d[1:] for d in DUPS],
                         ids=[d[0] for d in DUPS])
def test_duplicate_rule_mean_and_warning_or_strict_refusal(rows, keys, expected, lines):
    got, got_keys, warnings = merge_duplicates(rows, keys)
    assert [(r.path.name, pytest.approx(r.ssim)) for r in got] == expected
    assert len(got_keys) == len(got)
    if not lines:
        assert warnings == []
        assert merge_duplicates(rows, keys, strict=True)[0] == got
        return
    assert len(warnings) == 1 and "using their mean" in warnings[0]
    assert all(f"line {n} " in warnings[0] for n in lines)
    with pytest.raises(LabelsError, match="different labels") as err:
        merge_duplicates(rows, keys, strict=True)
    assert all(f"line {n} " in str(err.value) for n in lines)


def test_duplicates_differing_only_in_svg_bytes_are_one_image_at_their_geometric_mean():
    rows = [LabelRow(Path("a.png"), 0.9, None, 2, svg_bytes=1000),
            LabelRow(Path("b.png"), 0.9, None, 3, svg_bytes=4000),
            LabelRow(Path("c.png"), 0.9, None, 4, svg_bytes=None)]
    got, _, warnings = merge_duplicates(rows, ["k", "k", "k"])
    assert [(r.path.name, r.ssim, r.svg_bytes) for r in got] == [("a.png", 0.9, 2000)]
    assert len(warnings) == 1 and "2000 bytes" in warnings[0] and "--strict" not in warnings[0]
    with pytest.raises(LabelsError, match="svg_bytes 4000"):
        merge_duplicates(rows, ["k", "k", "k"], strict=True)
    # a copy that only lacks the size is not a conflict: both rows stay
    same = [rows[0], LabelRow(Path("d.png"), 0.9, None, 5)]
    assert merge_duplicates(same, ["k", "k"]) == (same, ["k", "k"], [])


def test_gather_applies_the_rule_and_reports_through_the_callback(tmp_path, make_dataset,
                                                                  extract_cfg, fake_backbone):
    from pipeline.train.features import gather

    csv = make_dataset(tmp_path, n=4)
    with open(csv, "a") as f:
        f.write("images/img001.png,0.125,flat\n")  # img001 again, another label
    rows = read_labels(csv)
    said: list[str] = []
    data = gather(rows, tmp_path / "f.h5", extract_cfg(), progress=False,
                  backbone=fake_backbone(), on_warning=said.append)
    assert len(data.rows) == 4 and data.warnings == said and "line 3 " in said[0]
    assert data.y[1] == pytest.approx((rows[1].ssim + 0.125) / 2)
    with pytest.raises(LabelsError, match="line 6 "):
        gather(rows, tmp_path / "f.h5", extract_cfg(), progress=False,
               backbone=fake_backbone(), strict=True)


def test_a_path_repeated_with_another_svg_bytes_is_kept_for_the_duplicate_rule(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    csv = tmp_path / "labels.csv"
    csv.write_text("path,ssim,svg_bytes\na.png,0.9,1000\na.png,0.9,1000\na.png,0.9,4000\n")
    rows = read_labels(csv)
    assert [(r.line, r.svg_bytes) for r in rows] == [(2, 1000), (4, 4000)]  # line 3: a repeat

"""Hostile inputs through the real `ssimcache` command: no traceback, no hang, names round-trip.

One table: each row runs the installed console script in a subprocess with a timeout (a hang
fails the row instead of hanging the suite) and checks exit code, output and written files.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.labels.definition import Label
from pipeline.labels.writer import append_labels
from pipeline.train.labels_csv import read_labels

REPO = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).parent / "ssimcache"
CMD = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "pipeline"]
FAST = ["--weights", "random:0", "--image-size", "32", "--no-progress"]
# Names the CSV writers must quote (bare CR, LF, comma, quote) or keep as bytes (not UTF-8).
WEIRD = ["cr\rname", "nl\nname", "com,ma", 'quo"te', os.fsdecode(b"\xff\xfe")]
HOSTILE = {"fifo.png": "is a FIFO", "loop.png": "symlink loop",
           "x" * 300 + ".png": "name too long", "dangling.png": "dangling symlink"}
# Entries of a folder input that are named like images but are not files: rows, not skips.
IN_FOLDER = {"dir.png": "is a directory", "loop.png": "symlink loop",
             "dangling.png": "dangling symlink"}


def _run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    # A UTF-8 locale: Python's stdout is then strict UTF-8, where a non-UTF-8 name used to crash.
    env = {**os.environ, "PYTHONPATH": str(REPO), "LC_ALL": "C.UTF-8", "PYTHONUTF8": "0",
           "PYTHONIOENCODING": ""}
    proc = subprocess.run([*CMD, *args], cwd=cwd, env=env, capture_output=True,
                          timeout=timeout)
    # Whatever the outcome, a user-facing path never ends in a traceback.
    assert b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
    return proc


def _csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def world(tmp_path_factory, trained_setup) -> dict:
    root = tmp_path_factory.mktemp("hostile")
    s = trained_setup(root / "set", n=24)
    good = sorted((root / "set" / "images").glob("*.png"))
    w = root / "in"
    w.mkdir()
    for i, stem in enumerate(WEIRD):  # a cached copy and an undecodable file per odd name
        shutil.copy(good[i], w / f"{stem}.png")
        (w / f"{stem}.bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    os.mkfifo(w / "fifo.png")
    os.symlink("loop.png", w / "loop.png")
    os.symlink("nowhere.png", w / "dangling.png")
    m = root / "mixed"  # a folder input: one image and entries that only look like images
    (m / "dir.png").mkdir(parents=True)
    shutil.copy(good[0], m / "ok.png")
    os.symlink("loop.png", m / "loop.png")
    os.symlink("nowhere.png", m / "dangling.png")
    (m / "sub").mkdir()
    os.symlink("..", m / "sub" / "up")  # a folder walk that followed this would never end
    # A labels CSV with the odd names (written by the library writer) for evaluate/train: each
    # a copy of a labelled image, with its label. Then one copy labelled differently.
    labels, dup = root / "set" / "weird.csv", root / "set" / "dup.csv"
    shutil.copy(s["csv"], labels)
    ssim = {r.path.name: r.ssim for r in read_labels(s["csv"])}
    append_labels(labels, [(w / f"{stem}.png", Label(ssim[good[i].name], 10))
                           for i, stem in enumerate(WEIRD)], "weird")
    shutil.copy(labels, dup)
    append_labels(dup, [(w / "quo\"te.png", Label(0.125, 10))], "weird")
    return {**s, "root": root, "in": w, "mixed": m, "weird_csv": labels, "dup_csv": dup}


def _named(w: Path, blocking: bool = True) -> list[str]:
    names = [f"{s}.png" for s in WEIRD] + [f"{s}.bad.png" for s in WEIRD]
    names += [n for n in HOSTILE if blocking or n != "fifo.png"]
    return [str(w / n) for n in names] + (["/dev/zero"] if blocking else [])


def _check_failure_rows(rows: list[list[str]], w: Path, blocking: bool,
                        reasons: bool = True) -> None:
    by_path = {r[0]: r[1] for r in rows[1:]}
    for stem in WEIRD:  # the path column holds the original name, bytes and all
        assert str(w / f"{stem}.bad.png") in by_path, (stem, by_path)
        assert str(w / f"{stem}.png") not in by_path
    for name, reason in HOSTILE.items():
        if blocking or name != "fifo.png":
            assert reason in by_path[str(w / name)] or not reasons, (name, by_path)
    if blocking:
        assert "character device" in by_path["/dev/zero"]


def _check_folder_rows(rows: list[list[str]], m: Path, reasons: bool = True) -> None:
    by_path = {r[0]: r[1] for r in rows[1:]}
    for name, reason in IN_FOLDER.items():
        assert reason in by_path[str(m / name)] or not reasons, (name, by_path)
    assert str(m / "ok.png") not in by_path


def label_twice(world: dict, tmp: Path) -> None:
    out, report = tmp / "new" / "labels.csv", tmp / "new2" / "fails.csv"
    args = ["label", *_named(world["in"]), str(world["mixed"]), "--out", str(out),
            "--report", str(report), "--workers", "1", "--no-progress"]
    first = _run(args, tmp)
    assert first.returncode == 0, first.stderr.decode(errors="replace")
    rows = read_labels(out)  # every odd name reads back and names an existing file
    assert sorted(r.path.name for r in rows) == sorted([f"{s}.png" for s in WEIRD] + ["ok.png"])
    _check_failure_rows(_csv_rows(report), world["in"], blocking=True)
    _check_folder_rows(_csv_rows(report), world["mixed"])
    again = _run(args, tmp)
    assert again.returncode == 0 and b"labelled 0 image(s)" in again.stdout, again.stdout
    assert len(read_labels(out)) == len(WEIRD) + 1  # a rerun appends nothing


def extract_report(world: dict, tmp: Path, blocking: bool = False) -> None:
    store, report = tmp / "new" / "dir" / "f.h5", tmp / "rep" / "fails.csv"
    args = ["extract", *_named(world["in"], blocking), str(world["mixed"]), "--store", str(store),
            "--report", str(report), *FAST]
    res = _run(args, tmp, timeout=40 if blocking else 120)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    assert store.is_file()  # a store in a missing folder is created, like every output
    # Every bad input has its row; the wording is the runner's (its hashing is not this
    # branch's: with hash_file it reads as in the label and score rows).
    _check_failure_rows(_csv_rows(report), world["in"], blocking, reasons=blocking)
    _check_folder_rows(_csv_rows(report), world["mixed"], reasons=blocking)


def extract_blocking(world: dict, tmp: Path) -> None:
    extract_report(world, tmp, blocking=True)


def score_csv(world: dict, tmp: Path) -> None:
    w = world["in"]
    args = ["score", *_named(w), "--store", str(world["store"]), "--checkpoint",
            str(world["ckpt"]), "--format", "csv", "--no-progress"]
    res = _run(args, tmp, timeout=60)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    text = res.stdout.decode("utf-8", "surrogateescape")
    rows = list(csv.reader(text.splitlines(keepends=True)))
    got = {r[0]: r[2] for r in rows[1:]}
    assert [r[0] for r in rows[1:]] == _named(w)  # one row per input, names intact
    for stem in WEIRD:
        assert float(got[str(w / f"{stem}.png")]) > -1 and got[str(w / f"{stem}.bad.png")] == ""
    err = res.stderr.decode()
    for name, reason in HOSTILE.items():
        assert reason in err, (name, err)
    assert "\\xff\\xfe.bad.png" in err and "cr\\rname.bad.png" in err  # escaped for the terminal


def score_table_json(world: dict, tmp: Path) -> None:
    w = world["in"]
    base = ["score", *_named(w), str(world["mixed"]), "--store", str(world["store"]),
            "--checkpoint", str(world["ckpt"]), "--no-progress"]
    table = _run(base, tmp, timeout=60)
    assert table.returncode == 0, table.stderr.decode(errors="replace")
    out = table.stdout.decode()  # the table is plain UTF-8 text: odd bytes are escaped
    assert "\\xff\\xfe.png" in out and "nl\\nname.png" in out and "\r" not in out
    js = _run([*base, "--format", "json"], tmp, timeout=60)
    assert js.returncode == 0, js.stderr.decode(errors="replace")
    paths = [r["path"] for r in json.loads(js.stdout)]
    assert str(w / f"{WEIRD[-1]}.png") in paths  # surrogate escapes: os.fsencode gives the bytes
    for name, reason in IN_FOLDER.items():  # folder entries that are not files: failed rows
        assert str(world["mixed"] / name) in paths and reason in js.stderr.decode(), name


def evaluate_weird(world: dict, tmp: Path) -> None:
    res = _run(["evaluate", "--labels", str(world["weird_csv"]), "--store",
                str(world["store"]), "--checkpoint", str(world["ckpt"]), "--cached-only",
                "--json", str(tmp / "new" / "m.json"), "--no-progress"], tmp)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    assert json.loads((tmp / "new" / "m.json").read_text())["n"] == 24 + len(WEIRD)


def evaluate_duplicate(world: dict, tmp: Path) -> None:
    args = ["evaluate", "--labels", str(world["dup_csv"]), "--store", str(world["store"]),
            "--checkpoint", str(world["ckpt"]), "--cached-only", "--json", "-", "--no-progress"]
    res = _run(args, tmp)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    # img003, its copy quo"te.png and the copy's second label: one row at their mean, said so
    assert json.loads(res.stdout)["n"] == 24 + len(WEIRD) + 1 - 2
    err = res.stderr.decode()
    assert "identical images different labels" in err and "using their mean" in err, err


def train_weird(world: dict, tmp: Path) -> None:
    res = _run(["train", "--labels", str(world["weird_csv"]), "--store", str(world["store"]),
                "--out", str(tmp / "new" / "h.safetensors"), "--cached-only", "--epochs", "2",
                "--features", "resnet50,imstats", *FAST], tmp)  # the blocks the store holds
    assert res.returncode == 0, res.stderr.decode(errors="replace")


def _bad_csv(body: bytes) -> Callable[[dict, Path], None]:
    def check(world: dict, tmp: Path) -> None:
        labels = world["root"] / "set" / f"bad{abs(hash(body))}.csv"
        labels.write_bytes(body)
        res = _run(["evaluate", "--labels", str(labels), "--store", str(world["store"]),
                    "--checkpoint", str(world["ckpt"]), "--cached-only", "--no-progress"],
                   tmp)
        err = res.stderr.decode(errors="replace")
        assert res.returncode == 1 and f"Error: {labels}" in err, err
    return check


def _slow(case: Callable[[dict, Path], None], id: str):
    """A row that runs the console script for extract/score/evaluate/train (2-11 s here: each
    run imports torch): left to `make test`, out of `make test-fast`."""
    return pytest.param(case, id=id, marks=pytest.mark.slow)


CASES = [
    pytest.param(label_twice, id="label-odd-names-and-non-files-rerun-appends-nothing"),
    _slow(extract_report, "extract-report-odd-names-loop-long-dangling-dir"),
    _slow(extract_blocking, "extract-fifo-dev-zero"),
    _slow(score_csv, "score-csv-fifo-dev-zero-odd-names"),
    _slow(score_table_json, "score-table-json-and-folder"),
    _slow(evaluate_weird, "evaluate-odd-names"),
    _slow(evaluate_duplicate, "evaluate-duplicate-labels-warned-and-averaged"),
    _slow(train_weird, "train-odd-names"),
    _slow(_bad_csv(b"path,ssim\n" + b"a" * 140_000 + b".png,0.5\n"), "csv-huge-field"),
    _slow(_bad_csv("path,ssim,family\nimages/img000.png,0.5,Caf\u00e9\n".encode("latin-1")),
          "csv-latin-1"),
    _slow(_bad_csv(b"path,ssim\nimages/img000.png,0.5\nimg\x00.png,0.5\n"), "csv-nul"),
    _slow(_bad_csv(b"\xef\xbb\xbfpath,ssim\r\n"), "csv-bom-header-only"),
    _slow(_bad_csv(b"path,ssim\nimages/img000.png,0_1\n"), "csv-underscore-number"),
]


@pytest.mark.parametrize("case", CASES)
def test_hostile_inputs_through_the_cli(world: dict, tmp_path: Path, case) -> None:
    try:
        case(world, tmp_path)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"hung: {e}")

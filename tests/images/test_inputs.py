"""Tests for pipeline.images.inputs: safe reads and hashes of hostile paths, folder expansion."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import ImageError, PipelineError
from pipeline.images.inputs import (
    UnreadableInput,
    check_regular_file,
    display_path,
    expand_inputs,
    hash_file,
    read_file,
)
from store.keys import content_key

REPO = Path(__file__).resolve().parents[2]
LONG = "x" * 300 + ".png"  # over the 255-byte limit of one name


def _hostile(tmp: Path) -> dict[str, tuple[str, str]]:
    """name -> (path, expected reason) for every kind of input that is not a regular file."""
    os.mkfifo(tmp / "fifo.png")
    os.symlink("loop.png", tmp / "loop.png")
    os.symlink("nowhere.png", tmp / "dangling.png")
    (tmp / "dir.png").mkdir()
    return {
        "fifo": (str(tmp / "fifo.png"), "is a FIFO"),
        "dev-zero": ("/dev/zero", "is a character device"),
        "dir": (str(tmp / "dir.png"), "is a directory"),
        "loop": (str(tmp / "loop.png"), "symlink loop"),
        "dangling": (str(tmp / "dangling.png"), "dangling symlink (points to nowhere.png"),
        "long-name": (str(tmp / LONG), "name too long"),
        "missing": (str(tmp / "gone.png"), "file not found"),
        "nul": (str(tmp / "a\0b.png"), "NUL byte"),
    }


CASES = ["fifo", "dev-zero", "dir", "loop", "dangling", "long-name", "missing", "nul"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("helper", [read_file, hash_file, check_regular_file])
def test_only_regular_files_are_read_each_other_input_is_a_reason(tmp_path, case, helper):
    path, reason = _hostile(tmp_path)[case]
    with pytest.raises(UnreadableInput) as err:
        helper(path)
    assert reason in err.value.reason
    assert str(err.value) == f"{path}: {err.value.reason}" and err.value.path == path
    assert isinstance(err.value, ImageError)  # callers that catch ImageError keep working
    back = pickle.loads(pickle.dumps(err.value))  # crosses the label worker pool intact
    assert (back.path, back.reason) == (path, err.value.reason)


def test_a_fifo_never_blocks_the_process(tmp_path):
    """In a child with a timeout: a blocking open of a FIFO would hang the test, not fail it."""
    os.mkfifo(tmp_path / "f.png")
    code = ("import sys; from pipeline.images.inputs import hash_file, read_file\n"
            "for f in (hash_file, read_file):\n"
            "    try: f(sys.argv[1])\n"
            "    except Exception as e: print(type(e).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "f.png")], timeout=30,
                         capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.split() == ["UnreadableInput", "UnreadableInput"], out.stderr


def test_hash_file_streams_equals_content_key_and_is_bounded(tmp_path):
    p = tmp_path / "big.bin"
    p.write_bytes(os.urandom(3 * (1 << 20) + 17))  # several 1 MiB pieces and a tail
    assert hash_file(p) == content_key(p) == content_key(p.read_bytes())
    assert hash_file(tmp_path / "big.bin", max_bytes=None) == content_key(p)
    with pytest.raises(UnreadableInput, match="over the 1,000-byte limit"):
        hash_file(p, max_bytes=1000)
    with pytest.raises(UnreadableInput, match="over the 1,000-byte limit"):
        read_file(p, max_bytes=1000)
    (tmp_path / "empty.png").write_bytes(b"")
    assert hash_file(tmp_path / "empty.png") == content_key(b"")


@pytest.mark.parametrize("raw, shown", [
    ("plain/a.png", "plain/a.png"),
    ("cr\rname.png", "cr\\rname.png"),
    ("nl\nname\t.png", "nl\\nname\\t.png"),
    ("esc\x1b[2J.png", "esc\\x1b[2J.png"),  # no terminal escape sequence gets through
    (os.fsdecode(b"\xff\xfe.png"), "\\xff\\xfe.png"),
    (b"\xff.png", "\\xff.png"),
    (Path("caf\u00e9.png"), "caf\u00e9.png"),  # UTF-8 stays as it is
])
def test_display_path_escapes_what_a_terminal_must_not_see(raw, shown):
    assert display_path(raw) == shown
    assert display_path(raw).isprintable()


# -- expansion -------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["loop", "long-name", "dangling", "missing", "fifo"])
def test_a_named_input_that_cannot_be_read_is_kept_for_its_report_row(tmp_path, case):
    path, _ = _hostile(tmp_path)[case]
    assert expand_inputs([path]) == [Path(path)]
    lst = tmp_path / "list.txt"
    lst.write_text(f"{Path(path).name}\n")
    assert expand_inputs([f"@{lst}"]) == [Path(path)]  # the same through an @list


def test_folder_entries_named_like_images_are_kept_whatever_they_are(tmp_path):
    _hostile(tmp_path)
    (tmp_path / "ok.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_bytes(b"x")  # not named like an image: not an input
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.jpg").write_bytes(b"x")
    os.symlink("..", tmp_path / "sub" / "up")  # followed, this would walk forever
    os.symlink(str(tmp_path), tmp_path / "sub" / "self.png")  # a link to a folder named .png
    got = [p.relative_to(tmp_path).as_posix() for p in expand_inputs([tmp_path])]
    assert got == ["dangling.png", "dir.png", "fifo.png", "loop.png", "ok.png",
                   "sub/deep.jpg", "sub/self.png"]


def test_folder_walk_over_a_symlink_loop_ends_quickly(tmp_path):
    """In a child with a timeout: rglob-style recursion through links would never return."""
    d = tmp_path / "d"
    (d / "a").mkdir(parents=True)
    os.symlink("../..", d / "a" / "b")
    os.symlink("a", d / "c")
    (d / "a" / "x.png").write_bytes(b"x")
    code = ("import sys; from pipeline.images.inputs import expand_inputs\n"
            "print(len(expand_inputs([sys.argv[1]])))")
    out = subprocess.run([sys.executable, "-c", code, str(d)], timeout=30, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "1", out.stderr


def test_an_unlistable_subfolder_is_kept_for_its_report_row(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0)
    if os.geteuid() == 0:  # root lists any folder: deny it the way the kernel would for others
        real_scandir, real_access = os.scandir, os.access

        def scandir(path):
            if Path(path) == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir)
        monkeypatch.setattr(os, "access", lambda p, m: Path(p) != locked and real_access(p, m))
    try:
        assert expand_inputs([tmp_path]) == [locked]
        with pytest.raises(UnreadableInput, match="cannot be listed"):
            read_file(locked)
    finally:
        os.chmod(locked, 0o755)


def test_list_file_with_non_utf8_names_and_crlf(tmp_path):
    name = os.fsdecode(b"\xff\xfe.png")
    (tmp_path / name).write_bytes(b"x")
    (tmp_path / "list.txt").write_bytes(b"\xff\xfe.png\r\n# comment\r\n")
    assert expand_inputs([f"@{tmp_path / 'list.txt'}"]) == [tmp_path / name]


@pytest.mark.parametrize("content, match", [
    (b"a.png\nb\0.png\n", r"list\.txt:2: contains a NUL byte"),
    (None, "is a directory"),
])
def test_bad_list_files_are_pipeline_errors(tmp_path, content, match):
    lst = tmp_path / "list.txt"
    if content is None:
        lst.mkdir()
    else:
        lst.write_bytes(content)
    with pytest.raises(PipelineError, match=match):
        expand_inputs([f"@{lst}"])


def test_list_file_from_a_pipe(tmp_path):
    """`@<(find ...)` hands over a pipe: a list file may be one (an image may not)."""
    (tmp_path / "a.png").write_bytes(b"x")
    r, w = os.pipe()
    os.write(w, f"{tmp_path / 'a.png'}\n".encode())
    os.close(w)
    try:
        got = expand_inputs([f"@/dev/fd/{r}"])
    finally:
        os.close(r)
    assert got == [tmp_path / "a.png"]


def test_expand_folders_globs_lists_dedup(tmp_path: Path) -> None:
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/x.png", "a/deep/y.JPG", "a/notes.txt", "b.webp"):
        (tmp_path / name).write_bytes(b"x")
    lst = tmp_path / "list.txt"
    lst.write_text("# comment\nb.webp\n\na/x.png\n")
    got = expand_inputs([tmp_path / "a", str(tmp_path / "*.webp"), f"@{lst}",
                         tmp_path / "a" / "x.png"])
    names = [p.relative_to(tmp_path).as_posix() for p in got]
    # folder: image suffixes only, recursive, sorted; duplicates across forms dropped
    assert names == ["a/deep/y.JPG", "a/x.png", "b.webp"]


def test_expand_keeps_missing_files_but_rejects_empty_globs(tmp_path: Path) -> None:
    assert expand_inputs([tmp_path / "gone.png"]) == [tmp_path / "gone.png"]
    with pytest.raises(PipelineError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.png")])
    with pytest.raises(PipelineError, match="cannot read list file"):
        expand_inputs([f"@{tmp_path / 'nolist.txt'}"])

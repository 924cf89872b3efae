"""The README and docs/ stay true: links resolve, the commands they show exist, the README
stays a ten-minute read that starts with `make demo` and `make test`."""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

# Pages another branch is writing right now; links to them may dangle until that branch lands.
# Paths relative to the repository root. Remove an entry as soon as its file exists.
COMING: set[str] = set()

README_MAX_LINES = 200
# The five commands of the README's tour.
TOUR = {("extract",), ("train",), ("evaluate",), ("score",), ("store", "info")}

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def split_fences(text: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(prose lines, [(info string, lines) per fenced code block])."""
    prose: list[str] = []
    blocks: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        m = FENCE.match(line)
        if m and current is None:
            current = []
            blocks.append((line.strip()[3:].strip(), current))
        elif m and current is not None:
            current = None
        elif current is not None:
            current.append(line)
        else:
            prose.append(line)
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed except
    hyphens and underscores, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@functools.cache
def anchors(page: Path) -> set[str]:
    prose, _ = split_fences(page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for line in prose:
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path) -> list[str]:
    prose, _ = split_fences(page.read_text(encoding="utf-8"))
    text = "\n".join(prose)
    text = re.sub(r"`[^`\n]*`", "", text)  # links shown as code are not links
    return [m.group(1) for m in LINK.finditer(text)]


def test_the_docs_pages_exist():
    names = {p.name for p in PAGES}
    for page in ("store.md", "stage-one.md", "labels-and-data.md", "stage-two.md",
                 "validate.md", "cluster.md", "bench.md"):
        assert page in names, f"docs/{page} is missing"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_resolve(page: Path):
    problems = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        try:
            dest_rel = dest.relative_to(ROOT).as_posix()
        except ValueError:
            problems.append(f"{target}: points outside the repository")
            continue
        if dest_rel in COMING:
            continue
        if not dest.exists():
            problems.append(f"{target}: {dest_rel} does not exist")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading '#{anchor}' in {dest_rel} "
                            f"(has: {sorted(anchors(dest))})")
    assert not problems, f"{rel(page)}:\n" + "\n".join(problems)


def test_coming_pages_are_still_coming():
    """An allow-list entry whose file now exists must be removed, so its links get checked."""
    landed = sorted(p for p in COMING if (ROOT / p).exists())
    assert not landed, f"remove {landed} from COMING in tests/test_docs.py"


def test_slug_matches_github():
    assert slug("Running it") == "running-it"
    assert slug("Stage one: `ssimcache extract`") == "stage-one-ssimcache-extract"
    assert slug("Labels CSV read by train, evaluate and validate") == \
        "labels-csv-read-by-train-evaluate-and-validate"
    assert slug("Uncertainty (MC dropout)") == "uncertainty-mc-dropout"


# -- commands shown in code blocks ---------------------------------------------------------

def command_lines(page: Path) -> list[str]:
    """Shell lines of the page's code blocks (not python ones), continuations joined."""
    _, blocks = split_fences(page.read_text(encoding="utf-8"))
    out = []
    for info, lines in blocks:
        if info.startswith(("python", "json")):
            continue
        joined = ""
        for line in lines:
            if line.rstrip().endswith("\\"):
                joined += line.rstrip()[:-1] + " "
                continue
            out.append(joined + line)
            joined = ""
    return out


def invocations(line: str) -> list[list[str]]:
    """The argument lists after each `ssimcache` in command position on a shell line."""
    line = re.sub(r"^\s*\$\s+", "", line)
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        tokens = line.split("#")[0].split()
    found = []
    start = True
    for i, tok in enumerate(tokens):
        if tok in ("&&", "||", ";", "|"):
            start = True
            continue
        if start and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", tok):
            continue  # VAR=value before the command
        if start and (tok == "ssimcache" or tok.endswith("/ssimcache")):
            rest = []
            for t in tokens[i + 1:]:
                if t in ("&&", "||", ";", "|"):
                    break
                rest.append(t)
            found.append(rest)
        start = False
    return found


@functools.cache
def help_text(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="ssimcache")
    assert result.exit_code == 0, f"ssimcache {' '.join(path)} --help failed:\n{result.output}"
    return result.output


def subcommands(path: tuple[str, ...]) -> set[str] | None:
    """Commands listed under 'Commands:' in `ssimcache PATH --help`; None for a leaf command."""
    text = help_text(path)
    if "\nCommands:\n" not in text:
        return None
    section = text.split("\nCommands:\n", 1)[1]
    return {m.group(1) for m in re.finditer(r"^  ([a-z][\w-]*)", section, re.M)}


def check_invocation(args: list[str]) -> tuple[tuple[str, ...], list[str]]:
    """(the command path shown, problems): each word names a listed (sub)command, each --flag
    appears in that command's --help."""
    path: tuple[str, ...] = ()
    problems = []
    i = 0
    while i < len(args):
        subs = subcommands(path)
        if subs is None:
            break
        word = args[i]
        if word.startswith("-"):
            break
        if word not in subs:
            problems.append(f"'ssimcache {' '.join((*path, word))}': no such command "
                            f"({' '.join(('ssimcache', *path))} --help lists {sorted(subs)})")
            return path, problems
        path += (word,)
        i += 1
    if subcommands(path) is not None and path != ():
        # a group shown without a subcommand is fine (e.g. `ssimcache bench --help`)
        return path, problems
    text = help_text(path)
    for tok in args[i:]:
        for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", tok):
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text):
                problems.append(f"'ssimcache {' '.join(path)}': no option {flag}")
    return path, problems


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_shown_commands_exist(page: Path):
    problems = []
    for line in command_lines(page):
        for args in invocations(line):
            _, found = check_invocation(args)
            problems += [f"{p}\n    in: {line.strip()}" for p in found]
    assert not problems, f"{rel(page)}:\n" + "\n".join(problems)


def test_readme_tour_shows_the_five_commands():
    shown = set()
    for line in command_lines(README):
        for args in invocations(line):
            path, _ = check_invocation(args)
            shown.add(path)
    missing = TOUR - shown
    assert not missing, f"README.md does not show {sorted(missing)}"


# -- the README's shape --------------------------------------------------------------------

def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES})"


def test_readme_starts_with_make_demo_and_make_test():
    lines = [ln for ln in README.read_text(encoding="utf-8").splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    first = "\n".join(lines[:6])
    assert "make demo" in first and "make test" in first, \
        f"the README's first lines must give `make demo` and `make test`:\n{first}"

"""The documentation is tested (issue 34): the site builds with ``--strict``, and every Python block runs.

Code blocks of README.md and docs/**/*.md:

- every ```` ```python ```` block runs, in order, one namespace per file (a page's later blocks use what its
  earlier ones defined), in a fresh working directory, with the Hub offline;
- a block that cannot run here (a GPU, several processes, the Hub, a long run) carries the line
  ``<!-- docs-test: skip (REASON) -->`` just before it, and the reason is required;
- the working directory holds what the README's two commands leave there and the pages name:
  ``demo_output/schedule`` (a schedule repo, as ``make demo`` writes it);
- shell blocks are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO

DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
SKIP = re.compile(r"^\s*<!--\s*docs-test:\s*skip\s*(?P<reason>.*?)\s*-->\s*$")
PYTHON = ("python", "py")


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    skip_reason: str | None  # None: runs

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def code_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file (indented fences too, e.g. in a list or an admonition)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = (opening["info"].strip().split() or [""])[0].strip("{}.").lower()
        body, j = [], i + 1
        while j < len(lines) and not re.match(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[j]):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        previous = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        marker = SKIP.match(previous)
        reason = marker["reason"].strip("()—-: ") if marker else None
        blocks.append(Block(path, i + 1, language, "\n".join(body) + "\n", reason))
        i = j + 1
    return blocks


ALL_BLOCKS = [block for path in DOC_FILES for block in code_blocks(path)]
PYTHON_FILES = sorted({b.path for b in ALL_BLOCKS if b.language in PYTHON}, key=DOC_FILES.index)


def test_the_docs_have_code_and_every_skip_says_why():
    python = [b for b in ALL_BLOCKS if b.language in PYTHON]
    assert len(python) >= 20 and len(PYTHON_FILES) >= 5  # the collector finds the blocks it should
    for block in python:
        assert block.skip_reason != "", f"{block.where}: a skipped block must state its reason"
    # a skip marker before anything but a Python block is a mistake
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8").splitlines()
        starts = {b.line for b in ALL_BLOCKS if b.path == path and b.language in PYTHON}
        for n, line in enumerate(text, 1):
            if SKIP.match(line):
                following = next((m for m in range(n + 1, len(text) + 1) if text[m - 1].strip()), None)
                assert following in starts, (
                    f"{path.relative_to(REPO)}:{n}: the skip marker is not before a Python block"
                )


@pytest.fixture
def docs_workdir(tmp_path, monkeypatch):
    """A fresh working directory, with the Hub offline (the pages' schedule is a zoo schedule: nothing to make)."""
    import torch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("WANDB_DISABLED", "true")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the snippets' models are tiny: one thread is faster on a shared CPU
    torch.manual_seed(0)
    yield tmp_path
    torch.set_num_threads(threads)


@pytest.mark.parametrize("path", PYTHON_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_python_block_runs(path, docs_workdir):
    blocks = [b for b in code_blocks(path) if b.language in PYTHON]
    namespace: dict = {"__name__": "__docs__"}
    ran = []
    for block in blocks:
        if block.skip_reason is not None:
            continue
        try:
            exec(compile(block.code, block.where, "exec"), namespace)  # noqa: S102
        except Exception as e:
            raise AssertionError(f"the code block at {block.where} failed: {type(e).__name__}: {e}") from e
        ran.append(block.line)
    assert ran == [b.line for b in blocks if b.skip_reason is None]  # every unmarked block ran


def test_the_site_builds_strictly(tmp_path):
    """``mkdocs build --strict``: a broken link, a missing results file or an unknown API name fails."""
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    site = tmp_path / "site"
    assert (site / "api" / "index.html").is_file()
    cli = (site / "cli" / "index.html").read_text(encoding="utf-8")
    assert "--meta_update_interval" in cli and "convert-official" in cli  # rendered from the parsers
    assert (site / "results" / "quality_cpu.png").is_file()


SHELL = ("bash", "sh", "shell", "console")


def _help_texts() -> dict[str, str]:
    """What ``mlrsnet <command> --help`` prints, per command (as the CLI reference page renders it)."""
    sys.path.insert(0, str(REPO / "docs"))
    try:
        import hooks
    finally:
        sys.path.remove(str(REPO / "docs"))
    return {title.removeprefix("mlrsnet").strip() or "mlrsnet": text for title, text in hooks._help_sections()}


def test_shell_blocks_name_commands_flags_and_files_that_exist():
    """Shell blocks are not run, but what they name must exist: ``mlrsnet`` commands and their flags, the scripts
    and config files of this repository, and ``make`` targets."""
    helps = _help_texts()
    targets = set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), flags=re.M))
    checked = 0
    for block in (b for b in ALL_BLOCKS if b.language in SHELL):
        for line in block.code.replace("\\\n", " ").splitlines():
            command = line.split(" #")[0].strip()
            words = command.split()
            if not words:
                continue
            for path in re.findall(
                r"\b((?:examples|benchmarks|tests|hub_cards)/[\w./-]+\.(?:py|yaml|sh|md))", command
            ):
                assert (REPO / path).is_file(), f"{block.where}: {path} does not exist"
                checked += 1
            if words[0] == "make":
                assert words[1] in targets, f"{block.where}: no make target {words[1]!r}"
                checked += 1
            if words[0] == "mlrsnet":
                sub = words[1]
                assert sub in helps, f"{block.where}: no command `mlrsnet {sub}`"
                for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", command):
                    assert re.search(rf"{re.escape(flag)}\b", helps[sub]), (
                        f"{block.where}: `mlrsnet {sub}` has no {flag}"
                    )
                    checked += 1
    assert checked >= 30

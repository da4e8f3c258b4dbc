"""MkDocs hooks (``mkdocs.yml: hooks``): what the site reads from the code and the results instead of copying it.

- Every file of ``benchmarks/results/`` (tables, pictures, logs) is published under ``results/``, so pages link and
  show the results as the benchmarks wrote them.
- The docstrings' Sphinx roles (``:class:`~mlrsnet_hf.X` ``) render as plain code in the API pages.
- ``<!-- cli-reference -->`` in a page becomes the ``--help`` of every ``mlrsnet`` command, rendered from the
  parsers of :mod:`mlrsnet_hf.cli` at build time.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CLI_MARKER = "<!-- cli-reference -->"
SPHINX_ROLE = re.compile(r":(?:class|mod|func|meth|attr|data|exc|obj):<code>(~?)([\w.]+)</code>")


def on_files(files: Files, config) -> Files:
    for path in sorted(RESULTS.iterdir()):
        if path.is_file():
            files.append(File.generated(config, f"results/{path.name}", abs_src_path=str(path)))
    return files


def _help_sections() -> list[tuple[str, str]]:
    os.environ["COLUMNS"] = "110"  # argparse wraps to the terminal: the same width on every machine
    from mlrsnet_hf.cli import build_parser, command_help
    from mlrsnet_hf.experiments.presets import PRESETS

    parser = build_parser()
    sections = [("mlrsnet", parser.format_help())]
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        if name in ("meta-train", "transfer", "train-controller"):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                command_help(name, PRESETS, usage_error=False, every_flag=True)  # --help-all: the reference
            sections.append((f"mlrsnet {name}", out.getvalue()))
        else:
            sections.append((f"mlrsnet {name}", sub.format_help()))
    return sections


def cli_reference() -> str:
    blocks = []
    for title, text in _help_sections():
        block = f"```text\n{text.rstrip()}\n```"
        if len(text.splitlines()) > 40:  # the training commands list every TrainingArguments flag: folded
            block = f'??? note "`{title} --help-all`"\n\n' + "\n".join(
                f"    {line}" if line else "" for line in block.splitlines()
            )
        blocks.append(f"### `{title}`\n\n{block}\n")
    return "\n".join(blocks)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    return markdown


def on_page_content(html: str, page, config, files) -> str:
    """``:class:`~mlrsnet_hf.MLRSNetConfig` `` (Sphinx, in the docstrings) -> ``MLRSNetConfig`` as code, as Sphinx
    shows it (``~``: the last name only)."""
    return SPHINX_ROLE.sub(lambda m: f"<code>{m[2].rsplit('.', 1)[-1] if m[1] else m[2]}</code>", html)

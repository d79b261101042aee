"""The README's and docs' commands keep working.

Every ``nas <command>`` written in README.md or docs/*.md (in code blocks and inline code) names a real
command, and every ``--option`` given to it appears in that command's ``--help``; options are read from
``--help`` at run time, never listed here. The README's quick commands (``--help``, ``nas validate``) are
run; blocks that install or search are only checked. Relative links point at files and headings that exist.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("**/*.md"))]
README_MAX_LINES = 250

SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
PROMPTED = {"console", ""}  # blocks whose commands are the lines after a `$ ` prompt
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[^\n`]*)\n(?P<body>.*?)^[ \t]*```[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
SEPARATORS = {"&&", "||", ";", "|", ">", ">>", "2>&1"}
SUBCOMMAND = re.compile(r"^[a-z][a-z0-9-]*$")
OPTION = re.compile(r"^\[?(--[a-z0-9][a-z0-9-]*)")
HELP_OPTION = re.compile(r"--[a-z0-9][a-z0-9-]*")
HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")


@dataclass(frozen=True)
class NasCommand:
    """One ``nas`` invocation written in a page: where, the subcommand (None: ``nas --help``) and its arguments."""

    page: str
    line: int
    text: str
    subcommand: str | None
    args: tuple[str, ...]
    in_block: bool

    @property
    def options(self) -> list[str]:
        return [m.group(1) for arg in self.args if (m := OPTION.match(arg))]

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text.strip()}"


def _tokens(text: str) -> list[str]:
    try:
        return shlex.split(text, comments=True)
    except ValueError:  # an unbalanced quote in prose: good enough to find the options
        return text.split("#", 1)[0].split()


def _nas_commands(text: str, page: str, line: int, in_block: bool) -> list[NasCommand]:
    """The ``nas`` invocations in one shell command line."""
    found, tokens = [], _tokens(text)
    for i, token in enumerate(tokens):
        if token != "nas" and not token.endswith("/nas"):
            continue
        rest = []
        for arg in tokens[i + 1 :]:
            if arg in SEPARATORS:
                break
            rest.append(arg)
        if rest and not rest[0].startswith("-"):
            if not SUBCOMMAND.match(rest[0]):  # a placeholder such as `nas <command> --help`
                continue
            found.append(NasCommand(page, line, text, rest[0], tuple(rest[1:]), in_block))
        else:
            found.append(NasCommand(page, line, text, None, tuple(rest), in_block))
    return found


def _block_lines(body: str, indent: str, lang: str) -> list[tuple[int, str]]:
    """(line offset, command) for each command of a code block: continuations joined, heredoc bodies skipped."""
    lines = [raw[len(indent) :] if raw.startswith(indent) else raw.lstrip() for raw in body.splitlines()]
    commands: list[tuple[int, str]] = []
    i, heredoc_end = 0, None
    while i < len(lines):
        start, line = i, lines[i]
        i += 1
        if heredoc_end is not None:
            if line.strip() == heredoc_end:
                heredoc_end = None
            continue
        if lang in PROMPTED and not line.startswith("$ "):  # a session or an output block: only `$ ` lines are commands
            continue
        if line.startswith("$ "):
            line = line[2:]
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        if match := HEREDOC.search(line):
            heredoc_end = match.group(1)
        commands.append((start, line))
    return commands


def _commands(path: Path) -> list[NasCommand]:
    text = path.read_text(encoding="utf-8")
    page = str(path.relative_to(ROOT))
    found: list[NasCommand] = []
    for block in FENCE.finditer(text):
        first = text.count("\n", 0, block.start("body")) + 1
        lang = block.group("lang").strip().lower()
        if lang not in SHELL_LANGUAGES | PROMPTED:  # json, yaml, python, markdown
            continue
        for offset, line in _block_lines(block.group("body"), block.group("indent"), lang):
            found += _nas_commands(line, page, first + offset, in_block=lang in SHELL_LANGUAGES)
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # keep line numbers
    for number, line in enumerate(prose.splitlines(), 1):
        for span in INLINE_CODE.findall(line):
            found += _nas_commands(span, page, number, in_block=False)
    return found


ALL_COMMANDS = [command for page in PAGES for command in _commands(page)]
SUBCOMMANDS = sorted({c.subcommand for c in ALL_COMMANDS if c.subcommand})


def _nas_argv() -> list[str]:
    """The installed ``nas`` script next to this Python, else its entry point from pyproject.toml."""
    script = Path(sys.executable).with_name("nas")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    entry = re.search(r'^nas\s*=\s*"([\w.]+):(\w+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert entry, "pyproject.toml declares no `nas` script"
    module, function = entry.groups()
    return [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())"]


def _run_nas(args: list[str] | tuple[str, ...], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run([*_nas_argv(), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@functools.cache
def _help(subcommand: str | None) -> subprocess.CompletedProcess[str]:
    return _run_nas([subcommand, "--help"] if subcommand else ["--help"])


def test_readme_is_a_front_page() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move details into docs/ (at most {README_MAX_LINES})"


def test_readme_has_the_ci_test_command() -> None:
    """The README's test command is exactly what CI runs (the last line of .ci/run)."""
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()][-1].strip()
    assert ci in README.read_text(encoding="utf-8")


def test_the_pages_mention_nas_commands() -> None:
    assert {"search", "validate"} <= set(SUBCOMMANDS), SUBCOMMANDS  # the extraction itself works


def test_nas_help_lists_every_subcommand_used() -> None:
    result = _help(None)
    assert result.returncode == 0, result.stdout + result.stderr
    missing = [sub for sub in SUBCOMMANDS if not re.search(rf"(?<![\w-]){re.escape(sub)}(?![\w-])", result.stdout)]
    assert not missing, f"`nas --help` does not list: {missing}"


@pytest.mark.parametrize("subcommand", SUBCOMMANDS)
def test_subcommand_exists_with_the_options_used(subcommand: str) -> None:
    result = _help(subcommand)
    users = [str(c) for c in ALL_COMMANDS if c.subcommand == subcommand]
    assert result.returncode == 0, f"`nas {subcommand} --help` failed (used at {users[0]}):\n{result.stdout}{result.stderr}"
    known = set(HELP_OPTION.findall(result.stdout))
    unknown = [f"{option} at {command}" for command in ALL_COMMANDS if command.subcommand == subcommand
               for option in command.options if option not in known]  # fmt: skip
    assert not unknown, f"options not in `nas {subcommand} --help`:\n" + "\n".join(unknown)


def _quick(command: NasCommand) -> bool:
    """Safe and quick to run: a help page, or checking a genome file."""
    return command.in_block and ("--help" in command.args or command.subcommand == "validate" or command.subcommand is None)


README_QUICK = [c for c in ALL_COMMANDS if c.page == "README.md" and _quick(c)]


def test_readme_has_quick_commands() -> None:
    assert README_QUICK, "README.md should show at least one command a newcomer can run at once (nas --help, nas validate)"


@pytest.mark.parametrize("command", README_QUICK, ids=lambda c: f"{c.page}:{c.line}")
def test_readme_quick_command_runs(command: NasCommand) -> None:
    args = [*((command.subcommand,) if command.subcommand else ()), *command.args]
    result = _run_nas(args)
    assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
    if command.subcommand == "validate" and "--help" not in command.args:
        assert re.search(r"\b[0-9a-f]{64}\b", result.stdout + result.stderr), "nas validate prints the canonical hash"


# Relative links and their anchors.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@functools.cache
def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    anchors: set[str] = set()
    for heading in HEADING.findall(text):
        slug, n = _slug(heading), 0
        while (slug if n == 0 else f"{slug}-{n}") in anchors:
            n += 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(f"{target}: no file {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_the_settings_table_in_the_docs_is_the_one_generated_from_search_config():
    from nas_core.config import settings_table_markdown

    text = (ROOT / "docs" / "configuration.md").read_text()
    start, end = "<!-- settings table: generated -->\n", "\n<!-- end of settings table -->"
    assert start in text and end in text
    assert text.split(start, 1)[1].split(end, 1)[0] == settings_table_markdown().rstrip()

"""Docs that cannot rot: every `stave …` the docs show names a real command and real options,
every setting is on the configuration page exactly as the settings class says, and every
relative link points at a file that exists."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main

from stave.cli import app
from stave.cli.lazy import LazyGroup
from stave.infra import settings_docs
from stave.infra.settings import Settings
from tests.test_cli_matrix import commands

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
SPAN = re.compile(r"`([^`\n]+)`")
# `stave` as a command: at the start, after a shell word or a `bin/`; not `stave_app`,
# `stave/cli`, `stave.flows`, `stave[acestep]` or a folder (`/var/lib/stave stave`).
INVOCATION = re.compile(r"(?:^|(?<=[\s(=$])|(?<=bin/))stave(?= [a-z-])")
SHELL_END = {"&&", "||", "|", ";", "#", ">", "2>&1", ")", "&"}


def _snippets(text: str) -> list[tuple[int, str]]:
    """(line number, text) of every code line and inline code span that may run `stave`."""
    found: list[tuple[int, str]] = []
    for block in FENCE.finditer(text):
        if block.group(1) not in ("", "bash", "sh", "console"):
            continue
        first = text[: block.start(2)].count("\n") + 1
        # A line ending in a backslash continues on the next.
        joined = block.group(2).replace("\\\n", " ")
        # A shell comment is prose.
        found += [(first + i, line.split(" #")[0]) for i, line in enumerate(joined.splitlines())]
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for span in SPAN.finditer(prose):
        found.append((prose[: span.start()].count("\n") + 1, span.group(1).replace("\\|", "|")))
    return found


def _invocations(snippet: str) -> list[list[str]]:
    calls = []
    for match in INVOCATION.finditer(snippet):
        words = []
        for word in snippet[match.end() :].split():
            if word in SHELL_END or word.startswith(("#", ">", "2>")):
                break
            words.append(word)
        calls.append(words)
    return calls


def _root() -> LazyGroup:
    root = typer.main.get_command(app)
    assert isinstance(root, LazyGroup)
    return root


# Typer carries its own copy of Click: groups and options are told apart by what they have.
def _is_group(command: Any) -> bool:
    return hasattr(command, "list_commands")


def _subcommand(group: Any, name: str) -> Any:
    ctx = typer.Context(group)
    if isinstance(group, LazyGroup):
        return group.load(name) if name in group.list_commands(ctx) else None
    return group.get_command(ctx, name)


def _option_names(command: Any) -> set[str]:
    names = {"--help"}
    for param in command.params:
        if param.param_type_name == "option":
            names.update(param.opts + param.secondary_opts)
    return names


def _problems(words: list[str]) -> list[str]:
    """What is wrong with `stave <words>`: an unknown command or option."""
    command: Any = _root()
    path = ["stave"]
    rest = list(words)
    while _is_group(command) and rest:
        word = rest[0].strip("[]()")
        if word.startswith("-") or not re.fullmatch(r"[a-z][a-z-]*([|/][a-z][a-z-]*)*", word):
            break  # an option of the group, or a placeholder (`stave CMD --help`)
        names = re.split(r"[|/]", word)
        found = [_subcommand(command, name) for name in names]
        missing = [name for name, sub in zip(names, found, strict=True) if sub is None]
        if missing:
            return [f"`{' '.join(path)}` has no command {', '.join(missing)}"]
        command, path = found[0], [*path, names[0]]
        rest.pop(0)
    known = _option_names(command)
    problems = []
    for word in rest:
        for option in re.findall(r"(?:^|[\[(|])(--?[a-zA-Z][\w-]*)", word):
            if option not in known:
                problems.append(f"`{' '.join(path)}` has no option {option}")
    return problems


def test_every_stave_invocation_in_the_docs_is_a_real_command_with_real_options() -> None:
    problems = []
    seen = 0
    for doc in DOCS:
        for line, snippet in _snippets(doc.read_text()):
            for words in _invocations(snippet):
                seen += 1
                problems += [f"{doc.relative_to(ROOT)}:{line}: {p}" for p in _problems(words)]
    assert seen > 100, f"only {seen} invocations found: the extraction is broken"
    assert not problems, "\n".join(problems)


def test_the_docs_test_finds_a_wrong_command_and_a_wrong_option() -> None:
    assert _problems(["backup", "pitr", "--latest", "--into", "DIR"]) == []
    assert _problems(["report", "models|failures", "--since", "7d"]) == []
    assert _problems(["backup", "nosuch"]) == ["`stave backup` has no command nosuch"]
    assert _problems(["gc", "[--delete]", "[--nosuch", "N]"]) == [
        "`stave gc` has no option --nosuch"
    ]
    calls = _invocations("KEY=$(.venv/bin/stave prompts upload f.csv) && stave_app /lib/stave x")
    assert calls == [["prompts", "upload", "f.csv)"]]


def test_the_configuration_page_is_generated_from_the_settings_class() -> None:
    documented = settings_docs.documented_fields()
    duplicated = sorted({name for name in documented if documented.count(name) > 1})
    assert not duplicated, f"documented twice in stave/infra/settings_docs/groups.py: {duplicated}"
    unknown = sorted(set(documented) - set(Settings.model_fields))
    assert not unknown, f"stave/infra/settings_docs/groups.py documents no such setting: {unknown}"
    missing = sorted(set(Settings.model_fields) - set(documented))
    assert not missing, f"settings missing from stave/infra/settings_docs/groups.py: {missing}"
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page == settings_docs.render(), (
        "docs/configuration.md is stale: python -m stave.infra.settings_docs "
        "--write docs/configuration.md"
    )


LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_that_exist(doc: Path) -> None:
    broken = [
        target
        for target, _ in LINK.findall(doc.read_text())
        if "://" not in target and not (doc.parent / target).exists()
    ]
    assert not broken, f"{doc.relative_to(ROOT)}: links to missing files: {broken}"


def _leaf_commands() -> list[str]:
    return [" ".join(path) for path, _ in commands()]


def test_every_command_is_in_the_readme_table() -> None:
    table = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("|")]
    shown = {" ".join(words[:2]) for line in table for words in _table_invocations(line)}
    missing = [c for c in _leaf_commands() if c not in shown and c.split()[0] not in shown]
    assert not missing, f"commands missing from the README's table: {missing}"


def _table_invocations(line: str) -> list[list[str]]:
    return [
        [w for w in words if re.fullmatch(r"[a-z][a-z-]*", w)]
        for span in SPAN.findall(line.replace("\\|", "|"))
        for words in _invocations(span)
    ]


def test_every_option_is_in_its_commands_readme_row() -> None:
    table = [
        line.replace("\\|", "|")
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith("|")
    ]
    missing = []
    for words, command in commands():
        path = " ".join(words)
        rows = " ".join(line for line in table if f"stave {path}" in line)
        if not rows:  # a group's commands shown together (`stave report models|failures|…`)
            rows = " ".join(line for line in table if f"stave {path.split()[0]} " in line)
        for param in command.params:
            names = [*param.opts, *param.secondary_opts]
            if param.param_type_name != "option" or "--help" in names:
                continue
            if not any(re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", rows) for n in names):
                missing.append(f"stave {path} {names[-1]}")
    assert not missing, f"options missing from the README's table: {missing}"

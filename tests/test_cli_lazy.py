"""The root command lists each command without importing it (stave/cli/lazy.py): what it lists
must be what the command says of itself, and `stave --help` must import no command module."""

from __future__ import annotations

import subprocess
import sys

import typer
import typer.main

from stave.cli import app
from stave.cli.lazy import COMMANDS, LazyGroup
from tests.test_cli import STAVE


def _first_paragraph(text: str) -> str:
    return " ".join(text.split("\n\n")[0].split())


def test_every_listed_command_says_what_its_own_help_says() -> None:
    root = typer.main.get_command(app)
    assert isinstance(root, LazyGroup)
    ctx = typer.Context(root)
    assert root.list_commands(ctx) == [entry.name for entry in COMMANDS]
    for entry in COMMANDS:
        listed = root.get_command(ctx, entry.name)
        assert listed is not None and listed.help == entry.help
        real = root.load(entry.name)
        assert real.name == entry.name
        assert _first_paragraph(real.help or "") == entry.help, (
            f"stave {entry.name}: the help listed in stave/cli/lazy.py differs from the command's"
        )


def test_help_and_version_import_no_command_module() -> None:
    probe = (
        "import sys\n"
        "from stave.cli import main\n"
        "for argv in (['stave', '--help'], ['stave', '--version']):\n"
        "    sys.argv = argv\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as done:\n"
        "        assert done.code == 0, done.code\n"
        "heavy = ('stave.cli.', 'stave.infra.settings', 'sqlalchemy', 'prefect', 'torch')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert "Usage: stave" in done.stdout and "stave " in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "['stave.cli.lazy']", done.stderr


def test_a_command_runs_through_the_lazy_group() -> None:
    done = subprocess.run([STAVE, "db", "nosuch"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "stave: error: No such command 'nosuch'. (see `stave db --help`)"
    )

"""The code's shape, checked: small modules, no private names borrowed across modules, the
import-linter contracts (ARCHITECTURE.md "One package, five layers")."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "stave"
MAX_LINES = 400


def modules() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if "sql/versions" not in p.as_posix()]


def test_no_module_grows_past_the_size_where_it_becomes_a_package() -> None:
    big = {
        str(p.relative_to(PACKAGE)): n
        for p in modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not big, f"split these into packages that re-export their names: {big}"


def test_no_private_name_is_imported_from_another_module() -> None:
    borrowed = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stave"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private:
                    borrowed.append(f"{path.relative_to(PACKAGE)}: {node.module} {private}")
    assert not borrowed, borrowed


def test_the_import_contracts_hold() -> None:
    linter = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    done = subprocess.run([linter], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stdout[-4000:]

"""The package as a worker host gets it: a wheel with one top-level name, `stave`, that works
from any folder beside other projects' top-level `models` and `tasks` packages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PIP = [sys.executable, "-m", "pip"]

pytestmark = pytest.mark.slow


def test_the_wheel_has_one_top_level_package_and_what_it_needs(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {
        "stave"
    }
    for needed in (
        "stave/prefect.yaml",
        "stave/sql/env.py",
        "stave/sql/script.py.mako",
        "stave/generator/checkpoints/stave-small.pt",
        "stave/generator/checkpoints/stave-small.json",
    ):
        assert needed in names, needed
    migrations = [n for n in names if n.startswith("stave/sql/versions/0")]
    assert len(migrations) == len(list((ROOT / "stave/sql/versions").glob("0*.py")))
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "stave = stave.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_installed_wheel_works_beside_other_projects_models_and_tasks(
    wheel: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    # Another project's generic top-level packages on the same path: importing either fails.
    for name in ("models", "tasks", "flows", "infra", "generator", "sql"):
        (site / name).mkdir()
        (site / name / "__init__.py").write_text(
            f"raise ImportError('another project\\'s {name}: Stave must not import it')\n"
        )
    probe = textwrap.dedent(
        """
        import importlib.metadata, json, sys, yaml
        import stave
        from stave.flows.admin import DEPLOYMENTS_FILE
        from stave.generator import PACKAGED_CHECKPOINT
        from stave.infra import migrate
        from prefect.utilities.importtools import import_object
        from prefect import Flow

        spec = yaml.safe_load(DEPLOYMENTS_FILE.read_text())
        flows = {d["name"]: import_object(d["entrypoint"]) for d in spec["deployments"]}
        (script,) = [
            e for e in importlib.metadata.entry_points(group="console_scripts")
            if e.name == "stave" and e.dist.locate_file("").as_posix().startswith(sys.argv[1])
        ]
        print(json.dumps({
            "stave": stave.__file__,
            "flows": {n: isinstance(f, Flow) for n, f in flows.items()},
            "head": migrate.head_revision(),
            "checkpoint": PACKAGED_CHECKPOINT.is_file(),
            "card": PACKAGED_CHECKPOINT.with_suffix(".json").is_file(),
            "script": script.value,
            "pull": spec.get("pull"),
        }))
        """
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("STAVE_", "PREFECT_"))},
        "PYTHONPATH": str(site),
        "STAVE_HOME": str(tmp_path / "home"),
        "PREFECT_HOME": str(tmp_path / "prefect"),
    }
    done = subprocess.run(
        [sys.executable, "-c", probe, str(site)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["stave"].startswith(str(site)), found  # the wheel's copy, not the checkout
    assert found["flows"] and all(found["flows"].values()), found["flows"]
    assert found["head"] == sorted(p.name[:4] for p in (ROOT / "stave/sql/versions").glob("0*"))[-1]
    assert found["checkpoint"] and found["card"]
    assert found["script"] == "stave.cli:main"
    assert found["pull"] == []  # no pull step: workers need no checkout

    # The command line from the installed copy, in a folder that is not the checkout.
    version = subprocess.run(
        [sys.executable, "-m", "stave", "--version"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert version.returncode == 0 and version.stdout.startswith("stave "), version.stderr
    shown = subprocess.run(
        [sys.executable, "-m", "stave", "env", "--json"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["home"] == str(tmp_path / "home")

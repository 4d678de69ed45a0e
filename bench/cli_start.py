"""How long the CLI takes to answer when it has nothing to do: `stave --help`, `stave
--version` and a group's help, against `python -c pass` (the interpreter alone) in the same run.

Each command runs `--runs` times in a fresh process (the console script this environment
installed); a repeat's figure is the median of its runs, and the verdict is the median of the
repeats. Target: `stave --help` and `stave --version` <= 0.4 s each (the commands' modules are
imported only when one runs: stave/cli/lazy.py).

Run: .venv/bin/python bench/cli_start.py [--runs 7] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = 0.4
HERE = Path(__file__).resolve().parent


def _stave() -> str:
    sibling = Path(sys.executable).parent / "stave"
    return str(sibling) if sibling.exists() else (shutil.which("stave") or "stave")


def _time(argv: list[str], runs: int) -> float:
    """The median wall time of `runs` fresh processes of `argv`, in seconds."""
    walls = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        walls.append(time.perf_counter() - began)
    return statistics.median(walls)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    stave = _stave()
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "stave --help": [stave, "--help"],
        "stave --version": [stave, "--version"],
        "stave db --help": [stave, "db", "--help"],
    }
    figures: dict[str, list[float]] = {name: [] for name in cases}
    for repeat in range(args.repeats):
        for name, argv in cases.items():
            figures[name].append(_time(argv, args.runs))
        print(
            f"repeat {repeat + 1}: "
            + ", ".join(f"{name} {figures[name][-1]:.3f} s" for name in cases),
            flush=True,
        )
    baseline = statistics.median(figures["python -c pass"])
    print(f"\n{'command':<18}{'runs (s)':<26}{'median':>8}{'vs python':>11}  target")
    failed = []
    for name in cases:
        median = statistics.median(figures[name])
        target = f"<= {TARGET_S} s" if name in ("stave --help", "stave --version") else "-"
        if target != "-" and median > TARGET_S:
            failed.append(name)
        runs = ", ".join(f"{v:.3f}" for v in figures[name])
        print(f"{name:<18}{runs:<26}{median:>8.3f}{median / baseline:>10.1f}x  {target}")
    if failed:
        print(f"\nFAIL: {', '.join(failed)} over {TARGET_S} s")
        sys.exit(1)
    print("\nPASS")


if __name__ == "__main__":
    main()

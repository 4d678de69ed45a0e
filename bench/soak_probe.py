"""What bench/soak.py measures each simulated day, how it moves the calendar, and how it judges.

Sizes are walked from disk (the filesystem store's objects, the home's folders); processes are
found from the long-lived ones the soak started (and their finishing processes, Prefect's
server and worker children); the database is asked for its size and dead tuples.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

DAY_S = 86400
MB = 1024 * 1024
# Long-lived process RSS may grow less than this per 1,000 jobs (the bound); threads
# and open files are flat (less than FLAT per 1,000 jobs). Growth under NOISE over the judged
# days is noise whatever its slope (a short run's slope is an extrapolation). A server's open
# files and threads come and go with its clients' keep-alive connections and its pools: the
# Prefect server's ranged 34-44 files and 13-16 threads over a 30-day run with no trend, and a
# 7-day run once ended 6 files above its start.
RSS_MB_PER_1000 = 20.0
FLAT_PER_1000 = 2.0
NOISE = {"rss_mb": 16.0, "threads": 6.0, "open_files": 10.0}
# A bounded folder's largest size over the last week is at most this far above its largest
# over the first week its rule holds (a week: rules that keep the newest of a week cycle).
BOUND_SLACK = 1.25
BOUND_SLACK_MB = 1.0


@dataclass
class Sample:
    day: int
    jobs: int
    processes: dict[str, dict[str, float]] = field(default_factory=dict)  # role -> figures
    sizes_mb: dict[str, float] = field(default_factory=dict)  # folder or prefix -> MB
    database: dict[str, float] = field(default_factory=dict)
    # Archived WAL segments older than the oldest kept base backup's start (the WAL rule: 0).
    wal_before_oldest_base: int = 0

    def headline(self) -> str:
        drain = self.processes.get("drain", {})
        return (
            f"drain RSS {drain.get('rss_mb', 0):.0f} MB, "
            f"store {sum(v for k, v in self.sizes_mb.items() if k.startswith('store')):.0f} MB"
        )


# Each bounded folder or prefix: (the rule that bounds it, the first day it holds, given the
# soak's keep days and week). Anything else is reported, not judged.
def rules(keep_days: int, week: int) -> dict[str, tuple[str, int]]:
    kept = keep_days + 1
    return {
        "home log: stave.log*": ("rotated at 20 MB, 5 kept", 1),
        "home log: data_docs": ("STAVE_DATA_DOCS_KEEP_DAYS", kept),
        "home log: validation_results": ("STAVE_DATA_DOCS_KEEP_DAYS", kept),
        "home tmp": ("emptied by each use", 1),
        "store gallery/": ("STAVE_GALLERY_KEEP_DAYS (gc; the bucket's rule on S3)", kept),
        "store data-docs/": ("STAVE_DATA_DOCS_KEEP_DAYS", kept),
        # Backups hold a growing database until the archive bounds its rows (a week past
        # the hot period), and base retention keeps the newest of the last ISO week too.
        "store backups/dump/": ("STAVE_BACKUP_KEEP_DAILY/WEEKLY/MONTHLY", 2 * week + 1),
        "store backups/base/": ("STAVE_BASE_KEEP_DAILY/WEEKLY", 2 * week + 1),
    }


class Probe:
    def __init__(
        self,
        home: Path,
        processes: dict[str, Any],
        database: Callable[[str], list[tuple[Any, ...]]],
        env: str = "dev",
    ) -> None:
        self.home, self.processes, self.sql = home, processes, database
        self.env_dir = home / env
        self.store = self.env_dir / "data" / "objects" / "stave"
        self.env = env

    # -- the calendar ------------------------------------------------------------------------------
    def age_one_day(self) -> None:
        """Everything one day older: the database's timestamps, the backups' manifests, and
        the times of the files the home and the store keep."""
        columns = self.sql(
            "SELECT c.table_name, c.column_name FROM information_schema.columns c "
            "JOIN information_schema.tables t USING (table_schema, table_name) "
            "WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE' "
            "AND c.data_type = 'timestamp with time zone'"
        )
        for table, column in columns:
            self.sql(
                f'UPDATE "{table}" SET "{column}" = "{column}" - interval \'1 day\' '
                f'WHERE "{column}" IS NOT NULL'
            )
        for manifest in (self.store / self.env / "backups").rglob("*.manifest.json"):
            self._age_manifest(manifest)
        for root in (self.env_dir / "log", self.store):
            for path in root.rglob("*"):
                if path.is_file():
                    st = path.stat()
                    os.utime(path, (st.st_atime - DAY_S, st.st_mtime - DAY_S))

    def _age_manifest(self, path: Path) -> None:
        from datetime import datetime, timedelta

        manifest = json.loads(path.read_text())
        for key in ("started_at", "finished_at", "verified_at"):
            if manifest.get(key):
                when = datetime.fromisoformat(manifest[key]) - timedelta(days=1)
                manifest[key] = when.isoformat()
        body = json.dumps(manifest).encode()
        path.write_bytes(body)
        meta = self.store / ".meta" / f"{path.relative_to(self.store).as_posix()}.json"
        if meta.is_file():  # the store's record of the object's sha256 and size
            import hashlib

            record = json.loads(meta.read_text())
            record.update(sha256=hashlib.sha256(body).hexdigest(), size=len(body))
            meta.write_text(json.dumps(record))

    def _wal_before_oldest_base(self) -> int:
        """WAL's bound is a time, not a size (a day of archival writes more than a quiet
        week): every archived segment a kept base backup no longer needs must be gone."""
        backups = self.store / self.env / "backups"
        oldest: dict[str, str] = {}  # system identifier -> the oldest kept base's first segment
        for manifest in (backups / "base").rglob("*.manifest.json"):
            body = json.loads(manifest.read_text())
            system, start = str(body["system_identifier"]), str(body["start_wal"])
            oldest[system] = min(start, oldest.get(system, start))
        stale = 0
        for system, start in oldest.items():
            for segment in (backups / "wal" / system).glob("*"):
                name = segment.name.split(".")[0]
                # Segment names sort by position (the timeline's own prefix first).
                if len(name) == 24 and name[8:] < start[8:]:
                    stale += 1
        return stale

    # -- a sample --------------------------------------------------------------------------------
    def sample(self, day: int, jobs: int) -> Sample:
        sample = Sample(day, jobs)
        sample.processes = self._processes()
        log = self.env_dir / "log"
        sizes = {
            "home log: stave.log*": sum(_size(p) for p in log.glob("stave.log*")),
            "home log: postgres.log": _size(log / "postgres.log"),
            "home log: data_docs": _size(log / "data_docs"),
            "home log: validation_results": _size(log / "validation_results"),
            "home tmp": _size(self.env_dir / "tmp"),
            "home data/prefect (Prefect's db)": _size(self.env_dir / "data" / "prefect"),
            "home data/pg (the database)": _size(self.env_dir / "data" / "pg"),
        }
        for prefix in ("audio/", "gallery/", "data-docs/", "archive/", "prompts/"):
            sizes[f"store {prefix}"] = _size(self.store / self.env / prefix)
        for kind in ("dump", "base", "wal"):
            sizes[f"store backups/{kind}/"] = _size(self.store / self.env / "backups" / kind)
        sizes["store .meta"] = _size(self.store / ".meta")
        sample.sizes_mb = {k: v / MB for k, v in sizes.items()}
        sample.wal_before_oldest_base = self._wal_before_oldest_base()
        ((size, live, dead),) = self.sql(
            "SELECT pg_database_size(current_database()), "
            "coalesce(sum(n_live_tup), 0), coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables"
        )
        sample.database = {"size_mb": size / MB, "live_rows": float(live), "dead_rows": float(dead)}
        return sample

    def _processes(self) -> dict[str, dict[str, float]]:
        roles: dict[str, list[psutil.Process]] = {}
        for name, popen in self.processes.items():
            try:
                top = psutil.Process(popen.pid)
                tree = [top, *top.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for process in tree:
                role = _role(name, process)
                if role is not None:
                    roles.setdefault(role, []).append(process)
        postmaster = self.env_dir / "data" / "pg" / "postmaster.pid"
        if postmaster.is_file():
            roles["postgres (postmaster)"] = [
                psutil.Process(int(postmaster.read_text().split()[0]))
            ]
        figures = {}
        for role, members in roles.items():
            try:
                figures[role] = {
                    "rss_mb": sum(p.memory_info().rss for p in members) / MB,
                    "threads": float(sum(p.num_threads() for p in members)),
                    "open_files": float(sum(p.num_fds() for p in members)),
                    "count": float(len(members)),
                }
            except psutil.NoSuchProcess:
                continue
        return figures


def _role(name: str, process: psutil.Process) -> str | None:
    """The long-lived role a process of `name`'s tree plays; None for a passing one (a flow
    run's process, a pg_dump)."""
    try:
        line = " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return None
    if "stave.tasks.finishing.worker" in line:
        return f"{name}: finishers"
    if line.endswith(("stave run-pending --follow", "stave server")) or " worker --pool" in line:
        if "prefect worker" in line:
            return f"{name}: prefect worker"
        return name
    if "prefect server start" in line or "uvicorn" in line:
        return f"{name}: prefect server"
    return None


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue
    return total


# -- the verdict -----------------------------------------------------------------------------------
@dataclass
class Verdict:
    what: str
    ok: bool
    detail: str


def slope_per_1000(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (jobs, value), per 1,000 jobs."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return (
        1000 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    )


def judge(
    samples: list[Sample],
    *,
    warmup: float,
    keep_days: int,
    week: int,
    report_only: set[str] = frozenset(),  # type: ignore[assignment]
) -> list[Verdict]:
    judged = samples[int(len(samples) * warmup) :]
    verdicts = []
    print(f"\nafter warm-up (days {judged[0].day}-{judged[-1].day}), per 1,000 jobs:")
    print(f"{'long-lived process':<28}{'RSS MB':>10}{'threads':>10}{'open files':>12}  verdict")
    for role in sorted(judged[-1].processes):
        cells, fails = [], []
        for metric, bound in (
            ("rss_mb", RSS_MB_PER_1000),
            ("threads", FLAT_PER_1000),
            ("open_files", FLAT_PER_1000),
        ):
            points = [(s.jobs, s.processes[role][metric]) for s in judged if role in s.processes]
            slope = slope_per_1000(points)
            growth = points[-1][1] - points[0][1] if points else 0.0
            cells.append(slope)
            if slope >= bound and growth >= NOISE[metric]:
                fails.append(f"{metric} +{slope:.1f} per 1,000 jobs (+{growth:.1f} in all)")
        ok = not fails
        if role in report_only:
            said = "reported (--report-only)" + (": grows, " + "; ".join(fails) if fails else "")
        else:
            verdicts.append(Verdict(role, ok, "; ".join(fails)))
            said = "ok" if ok else "GROWS: " + "; ".join(fails)
        print(f"{role:<28}{cells[0]:>+10.1f}{cells[1]:>+10.1f}{cells[2]:>+12.1f}  {said}")
    print(f"\n{'folder or prefix':<36}{'MB/1,000 jobs':>14}{'end MB':>9}  bound")
    bounded = rules(keep_days, week)
    for name in samples[-1].sizes_mb:
        points = [(s.jobs, s.sizes_mb[name]) for s in judged]
        slope, end = slope_per_1000(points), samples[-1].sizes_mb[name]
        rule = bounded.get(name)
        if rule is None or rule[1] > samples[-1].day:
            print(f"{name:<36}{slope:>+14.1f}{end:>9.1f}  " + (rule[0] if rule else "reported"))
            continue
        held = [s.sizes_mb[name] for s in samples if s.day >= rule[1]]
        first, last = max(held[:week]), max(held[-week:])
        ok = last <= first * BOUND_SLACK + BOUND_SLACK_MB
        said = f"largest {first:.1f} MB in the week from day {rule[1]}, {last:.1f} in the last"
        verdicts.append(Verdict(name, ok, said))
        verdict = "ok" if ok else f"GROWS: {said}"
        print(f"{name:<36}{slope:>+14.1f}{end:>9.1f}  {rule[0]}: {verdict}")
    stale = [(s.day, s.wal_before_oldest_base) for s in samples if s.wal_before_oldest_base]
    said = (
        "every archived segment after the oldest kept base backup's start"
        if not stale
        else f"segments older than the oldest kept base backup on days {stale}"
    )
    verdicts.append(Verdict("store backups/wal/", not stale, said))
    print(f"WAL rule (store backups/wal/): {'ok' if not stale else 'BROKEN'}: {said}")
    db = [(s.jobs, s.database["size_mb"]) for s in judged]
    dead = [(s.jobs, s.database["dead_rows"]) for s in judged]
    print(
        f"\ndatabase: {samples[-1].database['size_mb']:.1f} MB at the end "
        f"({slope_per_1000(db):+.1f} MB per 1,000 jobs), {samples[-1].database['live_rows']:.0f} "
        f"live rows, {samples[-1].database['dead_rows']:.0f} dead "
        f"({slope_per_1000(dead):+.0f} per 1,000 jobs; the calendar's own updates make some)"
    )
    return verdicts


def print_table(samples: list[Sample]) -> None:
    roles = sorted({r for s in samples for r in s.processes})
    print("\nday  jobs  " + "  ".join(f"{r[:18]:>18}" for r in roles) + "   (RSS MB/threads/fds)")
    for s in samples:
        cells = []
        for role in roles:
            p = s.processes.get(role)
            cells.append(
                f"{p['rss_mb']:>8.0f}/{p['threads']:>3.0f}/{p['open_files']:>4.0f}"
                if p
                else " " * 18
            )
        print(f"{s.day:>3} {s.jobs:>5}  " + "  ".join(f"{c:>18}" for c in cells))
    names = list(samples[-1].sizes_mb)
    print("\nday  " + "  ".join(f"{n.split(' ', 1)[1][:12]:>12}" for n in names) + "  (MB)")
    for s in samples:
        print(f"{s.day:>3}  " + "  ".join(f"{s.sizes_mb[n]:>12.1f}" for n in names))

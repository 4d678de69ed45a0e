"""Losing the database host: RPO and RTO for a database of --gb GiB, and WAL archive throughput.

In one run, against a real S3 server on loopback (moto's server mode) and the embedded
PostgreSQL with continuous archiving at the default `archive_timeout`:
1. fill the database to --gb GiB and take a base backup (`stave backup base`'s code);
2. --runs times: commit a marker row every 100 ms for --trickle seconds, then kill every
   process of the server at once and delete its data directory (the host is gone); recover
   from the store alone to the latest point as the new embedded database (`stave backup pitr
   --latest --as-embedded`'s code). RPO = moment of loss - commit time of the newest marker
   recovered; RTO = seconds from starting recovery to the recovered database answering;
3. archive throughput: --segments real WAL segments archived by Stave's archive command (a
   process per segment, as PostgreSQL runs it) vs put by the store's own client (the MinIO SDK,
   `fput_object`, in one process), same segments, same server.
Target: median RPO <= 60 s.

Run: .venv/bin/python bench/recovery.py [--gb 1.0] [--runs 3] [--trickle 75] [--segments 16]
     [--barman PATH/barman-cloud-wal-archive]  (a third row: barman-cloud on the same segments)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

TARGET_RPO_S = 60.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--trickle", type=float, default=75.0, help="seconds of markers per run")
    parser.add_argument("--segments", type=int, default=16)
    parser.add_argument(
        "--barman",
        default=None,
        help="path to barman-cloud-wal-archive (e.g. in a venv with barman[cloud]): a third row",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from backup_throughput import fill
    from common import throwaway_home
    from moto.server import ThreadedMotoServer

    throwaway_home()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    host, port = s3.get_host_and_port()
    os.environ.update(
        STAVE_S3_ENDPOINT=f"{host}:{port}",
        STAVE_S3_ACCESS_KEY="bench-access",
        STAVE_S3_SECRET_KEY="bench-secret",
        STAVE_BUCKET="stave-recovery-bench",
    )
    try:
        run(args, fill)
    finally:
        s3.stop()


def run(args: argparse.Namespace, fill: object) -> None:
    from sqlalchemy import text

    from stave.infra import migrate
    from stave.infra.db import database_url, dispose_engine, embedded_server, get_engine
    from stave.infra.objectstore import make_object_store
    from stave.infra.settings import get_settings
    from stave.tasks import pitr

    settings = get_settings()
    store = make_object_store(settings)
    url = database_url(settings)
    migrate.upgrade(url)
    engine = get_engine(settings)
    started = time.perf_counter()
    fill(engine, url, args.gb)  # type: ignore[operator]
    with engine.begin() as conn:
        size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
        conn.execute(
            text("CREATE TABLE IF NOT EXISTS bench_marker (n int PRIMARY KEY, at timestamptz)")
        )
    print(f"database: {size / 2**30:.2f} GiB, filled in {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    pitr.take_base_backup(engine, store, url=url, env_name=settings.env)
    print(f"base backup to the store: {time.perf_counter() - started:.0f} s")
    print(f"archive_timeout: {settings.wal_archive_timeout_s} s")

    rpos, rtos = [], []
    for i in range(args.runs):
        url = database_url(settings)
        first_committed, newest_committed = trickle(url, args.trickle)
        cluster = embedded_server(settings)
        lost_at = lose_host(cluster.pgdata)
        dispose_engine()
        began = time.perf_counter()
        recovered = pitr.recover(
            store,
            env_name=settings.env,
            target=None,
            into=pitr.check_embedded_slot(settings).parent / "recovered",
            archive_to=settings,
        )
        recovered = pitr.adopt_as_embedded(recovered, settings)
        # No marker of this run recovered: everything since its first commit was lost.
        newest = newest_marker(recovered.url(settings.database_name)) or first_committed
        rto = time.perf_counter() - began
        rpo = (lost_at - newest).total_seconds()
        rpos.append(rpo)
        rtos.append(rto)
        last_gap = (lost_at - newest_committed).total_seconds()
        print(
            f"run {i + 1}: RPO {rpo:5.1f} s (newest committed {last_gap:.1f} s before the loss), "
            f"RTO {rto:5.1f} s ({recovered.wal_files} WAL files replayed)"
        )
    rpo_median, rto_median = statistics.median(rpos), statistics.median(rtos)
    verdict = "meets" if rpo_median <= TARGET_RPO_S else "misses"
    print(
        f"RPO median {rpo_median:.1f} s of runs {[round(r, 1) for r in rpos]} "
        f"({verdict} <= {TARGET_RPO_S:.0f} s)"
    )
    runs = [round(r, 1) for r in rtos]
    print(f"RTO median {rto_median:.1f} s of runs {runs} for {size / 2**30:.2f} GiB")
    archive_throughput(store, settings, args.segments, args.barman)


def trickle(url: str, seconds: float) -> tuple[datetime, datetime]:
    """A marker every 100 ms; returns the first and the newest commit's times."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    first = newest = datetime.now(UTC)
    with engine.connect() as conn:
        n = conn.execute(text("SELECT coalesce(max(n), 0) FROM bench_marker")).scalar_one()
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            n += 1
            at = datetime.now(UTC)
            conn.execute(text("INSERT INTO bench_marker VALUES (:n, :at)"), {"n": n, "at": at})
            newest = at
            time.sleep(0.1)
    engine.dispose()
    return first, newest


def lose_host(pgdata: Path) -> datetime:
    """Every process of the server killed at once, then its data directory (and WAL) gone."""
    pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    for victim in [pid, *map(int, children)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    lost_at = datetime.now(UTC)
    time.sleep(0.5)
    shutil.rmtree(pgdata)
    return lost_at


def newest_marker(url: str) -> datetime | None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        at: datetime | None = conn.execute(text("SELECT max(at) FROM bench_marker")).scalar_one()
    engine.dispose()
    return at


def archive_throughput(store: object, settings: object, count: int, barman: str | None) -> None:
    from stave.infra import wal
    from stave.infra.objectstore.minio_store import MinioStore

    assert isinstance(store, MinioStore)
    source = [
        i.key
        for i in store.list(wal.wal_prefix(settings.env))  # type: ignore[attr-defined]
        if (held := wal.split_key(i.key, settings.env)) and wal.SEGMENT.match(held[1])  # type: ignore[attr-defined]
    ][:count]
    folder = Path(tempfile.mkdtemp(prefix="stave-wal-"))
    try:
        paths = []
        for key in source:
            path = folder / str(wal.split_key(key, settings.env)[1])  # type: ignore[attr-defined,index]
            path.write_bytes(wal.fetch(store, key))
            paths.append(path)
        total = sum(p.stat().st_size for p in paths)
        (folder / "global").mkdir()
        (folder / "global" / "pg_control").write_bytes((42).to_bytes(8, "little"))
        setup = wal.write_target(
            settings.model_copy(update={"env": "stage"}),  # type: ignore[attr-defined]
            folder / "target.json",
        )
        started = time.perf_counter()
        for path in paths:
            subprocess.run(
                [sys.executable, "-m", "stave.infra.wal", "push", "--target",
                 str(setup.target_file), path.name, path.name],
                cwd=folder, check=True,
            )  # fmt: skip
        ours = time.perf_counter() - started
        stored = sum(i.size for i in store.list(wal.wal_prefix("stage")))
        started = time.perf_counter()
        for path in paths:
            store.client.fput_object(store.bucket, f"raw-wal/{path.name}", str(path))
        raw = time.perf_counter() - started
        barman_s = barman_archive(barman, store, paths) if barman else None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    mib = total / 2**20
    print(f"\nWAL archive throughput, {len(paths)} segments, {mib:.0f} MiB:")
    print(f"{'':<44}{'seconds':>9}{'MiB/s':>9}{'MiB stored':>12}")
    name = "stave archive command (process per segment)"
    print(f"{name:<44}{ours:>9.2f}{mib / ours:>9.1f}{stored / 2**20:>12.1f}")
    print(f"{'MinIO SDK fput_object (one process)':<44}{raw:>9.2f}{mib / raw:>9.1f}{mib:>12.1f}")
    if barman_s is not None:
        name = "barman-cloud-wal-archive --gzip (per segment)"
        print(f"{name:<44}{barman_s:>9.2f}{mib / barman_s:>9.1f}{'':>12}")
    print(f"ratio stave/raw throughput: {raw / ours:.2f}")


def barman_archive(command: str, store: object, paths: list[Path]) -> float:
    """The same segments through barman-cloud's archiver, as PostgreSQL would run it."""
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": os.environ["STAVE_S3_ACCESS_KEY"],
        "AWS_SECRET_ACCESS_KEY": os.environ["STAVE_S3_SECRET_KEY"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    destination = f"s3://{store.bucket}/barman"  # type: ignore[attr-defined]
    endpoint = f"http://{os.environ['STAVE_S3_ENDPOINT']}"
    started = time.perf_counter()
    for path in paths:
        subprocess.run(
            [command, "--endpoint-url", endpoint, "--gzip", destination, "stave", str(path)],
            check=True, env=env, capture_output=True,
        )  # fmt: skip
    return time.perf_counter() - started


if __name__ == "__main__":
    main()

"""Drain runs: how much of each drain's wall its model worked (ARCHITECTURE.md, "Processes
on a GPU host").

A drain records itself when it starts making batches and after each one: its batches, clips,
the model's own seconds and its wall so far. `stave job` sums a job's runs; the metrics show
each recent run's ratio per worker (`stave_gpu_busy_ratio`). The ratio is the model's time
over the wall: near 1 the GPU is the limit, near 0.2 the platform around it is.
"""

from __future__ import annotations

import socket
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from stave.models.base import new_id


def start(
    engine: Engine, worker: str, job_id: uuid.UUID | None, flow_run_id: uuid.UUID | None
) -> uuid.UUID:
    run_id = new_id()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO drain_run (id, worker, host, job_id, flow_run_id, batches, clips, "
                "model_s, wall_s, ended) VALUES (:id, :worker, :host, :job, :flow, 0, 0, 0, 0, "
                "false)"
            ),
            {
                "id": run_id,
                "worker": worker[:128],
                "host": socket.gethostname()[:64],
                "job": job_id,
                "flow": flow_run_id,
            },
        )
    return run_id


def update(
    engine: Engine,
    run_id: uuid.UUID,
    *,
    batches: int,
    clips: int,
    model_s: float,
    wall_s: float,
    ended: bool = False,
) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE drain_run SET batches = :batches, clips = :clips, model_s = :model, "
                "wall_s = :wall, ended = :ended, updated_at = now() WHERE id = :id"
            ),
            {
                "id": run_id,
                "batches": batches,
                "clips": clips,
                "model": model_s,
                "wall": wall_s,
                "ended": ended,
            },
        )


def for_job(conn: Connection, job_id: uuid.UUID) -> dict[str, Any] | None:
    """The job's drains summed: runs, the model's seconds, the walls' seconds, the ratio."""
    row = conn.execute(
        text(
            "SELECT count(*) AS runs, coalesce(sum(model_s), 0) AS model_s, "
            "coalesce(sum(wall_s), 0) AS wall_s FROM drain_run WHERE job_id = :j"
        ),
        {"j": job_id},
    ).one()
    if not row.runs:
        return None
    busy = round(row.model_s / row.wall_s, 3) if row.wall_s > 0 else None
    return {
        "runs": int(row.runs),
        "model_s": round(float(row.model_s), 2),
        "wall_s": round(float(row.wall_s), 2),
        "gpu_busy": busy,
    }


def recent(conn: Connection, window_s: float) -> list[Any]:
    """Drains updated in the last `window_s` seconds (running, or just ended), newest first."""
    return list(
        conn.execute(
            text(
                "SELECT worker, host, job_id, model_s, wall_s, ended FROM drain_run "
                "WHERE updated_at > now() - make_interval(secs => :w) ORDER BY updated_at DESC"
            ),
            {"w": window_s},
        )
    )

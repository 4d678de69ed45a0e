"""A backfill batch's vectors and its cursor, committed together (binary COPY, or an upsert)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import psycopg
from sqlalchemy.engine import Engine

from stave.infra.pgraw import COPY_SIGNATURE, COPY_TRAILER, driver_connection
from stave.models.assets import EMBEDDING_DIM
from stave.models.base import new_id, new_id_block
from stave.tasks.backfill.pages import AssetRef
from stave.tasks.backfill.runs import RUNS
from stave.tasks.resumable import Cursor, Run


@dataclass
class BatchResult:
    vectors: list[tuple[uuid.UUID, np.ndarray]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    fetch_s: float = 0.0
    encode_s: float = 0.0
    write_s: float = 0.0
    written: int = 0
    path: str = ""  # "copy" (straight in) or "upsert" (through staging, on a conflict)
    abandoned: bool = False  # a stop was asked mid-batch: nothing of it was written

    def fail(self, ref: AssetRef, reason: str, error_class: str) -> None:
        self.failures.append(
            {"asset_id": str(ref.id), "reason": reason, "error_class": error_class}
        )

    def seconds(self) -> dict[str, float]:
        return {"fetch": self.fetch_s, "encode": self.encode_s, "write": self.write_s}


def copy_chunks(
    asset_ids: Sequence[uuid.UUID], vectors: np.ndarray, version: str, rows: int = 256
) -> Iterator[bytes]:
    """PostgreSQL's binary COPY stream for latent_embedding (id, asset_id, encoder_version,
    embedding), laid out by numpy a chunk at a time instead of field by field in Python.

    Chunks rather than one buffer so the server stores chunk k while chunk k+1 is laid out.
    Row ids are fresh UUIDv7s; vectors go in as big-endian float32 behind pgvector's binary
    header (int16 dim, int16 unused).
    """
    tag = version.encode()
    dim = EMBEDDING_DIM
    layout = np.dtype(
        [
            ("fields", ">i2"),
            ("id_len", ">i4"),
            ("id", "S16"),
            ("asset_len", ">i4"),
            ("asset", "S16"),
            ("version_len", ">i4"),
            ("version", f"S{len(tag)}"),
            ("vector_len", ">i4"),
            ("dim", ">i2"),
            ("unused", ">i2"),
            ("values", ">f4", (dim,)),
        ]
    )
    yield COPY_SIGNATURE
    for start in range(0, len(asset_ids), rows):
        part = asset_ids[start : start + rows]
        out = np.zeros(len(part), dtype=layout)
        out["fields"], out["id_len"], out["asset_len"] = 4, 16, 16
        out["version_len"], out["vector_len"], out["dim"] = len(tag), 4 + 4 * dim, dim
        out["id"] = new_id_block(len(part))
        out["asset"] = np.frombuffer(b"".join(a.bytes for a in part), dtype="S16")
        out["version"] = tag
        out["values"] = vectors[start : start + rows]
        yield out.tobytes()
    yield COPY_TRAILER


_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS tmp_backfill_stage "
    f"(id uuid, asset_id uuid, embedding vector({EMBEDDING_DIM})) ON COMMIT DELETE ROWS"
)
_UPSERT = (
    "INSERT INTO latent_embedding (id, asset_id, encoder_version, embedding, created_at) "
    "SELECT s.id, s.asset_id, %s, s.embedding, now() FROM tmp_backfill_stage s "
    # An asset archived or deleted since it was read is passed over, not an FK error.
    "JOIN audio_asset a ON a.id = s.asset_id "
    "ON CONFLICT (asset_id, encoder_version) DO UPDATE "
    "SET embedding = EXCLUDED.embedding, created_at = EXCLUDED.created_at"
)


def write_batch(
    engine: Engine,
    run: Run,
    expected_cursor: Cursor | None,
    new_cursor: Cursor,
    result: BatchResult,
) -> bool:
    """The batch's vectors and the run's cursor, in one transaction.

    Two ways in, one outcome. First, binary COPY straight into latent_embedding inside a
    savepoint: COPY inserts rows in bulk (INSERT … SELECT inserts one at a time and measured
    about twice as slow here), and in a backfill a conflict is rare, since only assets without the
    version's embedding are read. If any row conflicts (a retried batch, an overlapping run) or
    its asset has gone, the savepoint is rolled back and the batch goes the idempotent way:
    binary COPY into a session staging table, then `INSERT … ON CONFLICT DO UPDATE` joined to
    the assets that still exist.

    The cursor update is fenced on the cursor the batch started from: if it has moved (this
    batch was already committed by an earlier attempt whose reply was lost), the transaction
    is rolled back and nothing is counted twice. False in that case.
    """
    started = time.perf_counter()
    asset_ids = [asset_id for asset_id, _ in result.vectors]
    matrix = (
        np.stack([vector for _, vector in result.vectors])
        if result.vectors
        else np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    )
    with driver_connection(engine) as conn:
        with conn.cursor() as cur:
            try:
                # A lost commit only means the batch is done again (rows and cursor together),
                # so the batch does not wait for its WAL to reach the disk.
                cur.execute("SET LOCAL synchronous_commit = off")
                with conn.transaction():  # a savepoint inside the batch's transaction
                    with cur.copy(
                        "COPY latent_embedding (id, asset_id, encoder_version, embedding) "
                        "FROM STDIN WITH (FORMAT BINARY)"
                    ) as copy:
                        for chunk in copy_chunks(asset_ids, matrix, run.key):
                            copy.write(chunk)
                    written = len(asset_ids)
                    result.path = "copy"
            except (psycopg.errors.UniqueViolation, psycopg.errors.ForeignKeyViolation):
                cur.execute(_STAGE)
                with cur.copy(
                    "COPY tmp_backfill_stage (id, asset_id, embedding) "
                    "FROM STDIN WITH (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(["uuid", "uuid", "vector"])
                    for asset_id, vector in result.vectors:
                        copy.write_row((new_id(), asset_id, vector))
                cur.execute(_UPSERT, (run.key,))
                written = max(cur.rowcount, 0)
                result.path = "upsert"
            if not RUNS.checkpoint(cur, run, expected_cursor, new_cursor, written, result.failures):
                conn.rollback()
                return False
        conn.commit()
    result.written = written
    result.write_s += time.perf_counter() - started
    return True

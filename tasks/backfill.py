"""Latent backfills: embeddings for an encoder version over existing clips, resumably.

A run walks `audio_asset` in `(created_at, id)` order (keyset pagination on its index) and takes
the assets that have no embedding for the version. Each batch's vectors go in with binary COPY
into a session-local staging table and one `INSERT … ON CONFLICT DO UPDATE`, and the run's
cursor advances in that same transaction: a run killed at any point resumes after its last
committed batch, with no duplicate (the upsert and the fenced cursor) and no gap (the cursor
only passes what was committed). An asset whose audio is missing, corrupted or not audio is
recorded on the run and passed over; the rest go on. This module has no Prefect in it.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from infra.errors import InvalidInput, ObjectCorrupted, ObjectNotFound, StaveError
from infra.objectstore import ObjectStore
from infra.settings import Settings
from models.assets import EMBEDDING_DIM
from models.base import new_id, new_id_block
from tasks.vector_index import check_encoder_version

MAX_RECORDED_FAILURES = 1000


class BackfillBusy(StaveError):
    """Another process is running this backfill now."""


class Encoder(Protocol):
    @property
    def version(self) -> str: ...

    def embed_many(self, clips: Sequence[tuple[np.ndarray, int]]) -> np.ndarray: ...


@dataclass(frozen=True)
class StaveEncoder:
    """The built-in autoencoder's embedding head, named by its checkpoint."""

    generator: Any  # generator.pipeline.StaveGenerator
    version: str

    def embed_many(self, clips: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
        return np.asarray(self.generator.embed_many(clips))


def load_encoder(
    engine: Engine, settings: Settings, version: str | None, checkpoint: str | None
) -> StaveEncoder:
    """The encoder for `version`: the configured checkpoint's, a given checkpoint's, or that of
    a registered model version whose checkpoint file is on this machine."""
    from tasks.inference import load_model

    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise InvalidInput(f"checkpoint {checkpoint}: no such file")
        model = load_model(settings, path)
    else:
        model = load_model(settings)
        if version and version != model.encoder_version:
            path = _registered_checkpoint(engine, version)
            model = load_model(settings, path)
    if version and version != model.encoder_version:
        raise InvalidInput(
            f"encoder version {version}: the checkpoint given makes {model.encoder_version}"
        )
    builtin = getattr(model.generator, "embedder", None) or model.generator
    return StaveEncoder(generator=builtin, version=model.encoder_version)


def _registered_checkpoint(engine: Engine, version: str) -> Path:
    check_encoder_version(version)
    sha12 = version.removeprefix("stave-ae-")
    with engine.connect() as conn:
        uris = conn.execute(
            text("SELECT checkpoint_uri FROM model_version WHERE checkpoint_sha256 LIKE :p"),
            {"p": sha12 + "%"},
        ).scalars()
        for uri in uris:
            if uri.startswith("file://") and Path(uri.removeprefix("file://")).is_file():
                return Path(uri.removeprefix("file://"))
    raise InvalidInput(
        f"encoder version {version}: no checkpoint for it on this machine; "
        "pass --checkpoint PATH (or the checkpoint parameter)"
    )


# -- scope ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scope:
    """Which assets a run covers; its digest names the run to resume."""

    encoder_version: str
    created_after: datetime | None = None
    created_before: datetime | None = None
    model_version_ids: tuple[uuid.UUID, ...] = ()
    model_version: str | None = None

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.params(), sort_keys=True).encode()).hexdigest()

    def params(self) -> dict[str, Any]:
        return {
            "created_after": _iso(self.created_after),
            "created_before": _iso(self.created_before),
            "model_version_ids": sorted(str(i) for i in self.model_version_ids),
        }


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def resolve_scope(
    engine: Engine,
    encoder_version: str,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    model_version: str | None = None,
) -> Scope:
    check_encoder_version(encoder_version)
    after, before = _aware(created_after), _aware(created_before)
    if after and before and after >= before:
        raise InvalidInput(f"created_after ({after}) must be before created_before ({before})")
    ids: tuple[uuid.UUID, ...] = ()
    if model_version:
        from tasks.search import resolve_model_versions

        with engine.connect() as conn:
            ids = tuple(resolve_model_versions(conn, model_version))
    return Scope(encoder_version, after, before, ids, model_version)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


# -- the run record ---------------------------------------------------------------------------
@dataclass
class Run:
    id: uuid.UUID
    encoder_version: str
    upper_bound: datetime
    cursor: tuple[datetime, uuid.UUID] | None
    planned: int
    written: int
    failed: int
    batches: int
    resumed: bool

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cursor"] = [self.cursor[0].isoformat(), str(self.cursor[1])] if self.cursor else None
        return out


_RUN_COLUMNS = (
    "id, encoder_version, upper_bound, cursor_created_at, cursor_id, planned, written, failed, "
    "batches"
)


def _run(row: Any, resumed: bool) -> Run:
    cursor = (row.cursor_created_at, row.cursor_id) if row.cursor_id else None
    return Run(
        id=row.id,
        encoder_version=row.encoder_version,
        upper_bound=row.upper_bound,
        cursor=cursor,
        planned=row.planned,
        written=row.written,
        failed=row.failed,
        batches=row.batches,
        resumed=resumed,
    )


def find_open_run(conn: Connection, scope: Scope) -> Run | None:
    row = conn.execute(
        text(
            f"SELECT {_RUN_COLUMNS} FROM backfill_run WHERE encoder_version = :v AND scope = :s "
            "AND status <> 'completed'"
        ),
        {"v": scope.encoder_version, "s": scope.digest},
    ).first()
    return _run(row, resumed=True) if row else None


@contextmanager
def exclusive(engine: Engine, scope: Scope) -> Iterator[None]:
    """Hold the run's advisory lock for as long as it works: a second runner of the same
    backfill is told so, and a crashed runner's lock goes with its connection."""
    key = int(
        hashlib.sha256(f"{scope.encoder_version}/{scope.digest}".encode()).hexdigest()[:15], 16
    )
    with engine.connect() as conn:
        if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
            raise BackfillBusy(
                f"a backfill for encoder {scope.encoder_version} over this range is already "
                "running in another process; wait for it or cancel it"
            )
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


def open_run(engine: Engine, scope: Scope) -> Run:
    """The scope's unfinished run, taken over (it resumes from its cursor), or a new one."""
    with engine.begin() as conn:
        row = conn.execute(
            text(
                f"UPDATE backfill_run SET status = 'running', updated_at = now(), error = NULL "
                f"WHERE encoder_version = :v AND scope = :s AND status <> 'completed' "
                f"RETURNING {_RUN_COLUMNS}"
            ),
            {"v": scope.encoder_version, "s": scope.digest},
        ).first()
        if row is not None:
            return _run(row, resumed=True)
        upper = _new_upper_bound(conn, scope)
        planned = _count_pending(conn, scope, upper, None)
        params = {**scope.params(), "model_version": scope.model_version}
        row = conn.execute(
            text(
                "INSERT INTO backfill_run (id, encoder_version, scope, params, upper_bound, "
                "status, planned, written, failed, batches, failures, stats, created_at, "
                "updated_at) VALUES (:id, :v, :s, CAST(:params AS jsonb), :upper, 'running', "
                ":planned, 0, 0, 0, '[]', '{}', now(), now()) "
                f"RETURNING {_RUN_COLUMNS}"
            ),
            {
                "id": new_id(),
                "v": scope.encoder_version,
                "s": scope.digest,
                "params": json.dumps(params),
                "upper": upper,
                "planned": planned,
            },
        ).one()
    return _run(row, resumed=False)


def finish_run(engine: Engine, run_id: uuid.UUID, status: str, error: str | None = None) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE backfill_run SET status = :st, error = :err, updated_at = now(), "
                "finished_at = CASE WHEN :done THEN now() END WHERE id = :id"
            ),
            {"st": status, "err": error, "id": run_id, "done": status == "completed"},
        )


# -- finding the next batch -------------------------------------------------------------------
@dataclass(frozen=True)
class AssetRef:
    id: uuid.UUID
    created_at: datetime
    object_key: str
    sha256: str


def _pending_sql(scope: Scope, cursor: tuple[datetime, uuid.UUID] | None) -> str:
    where = ["a.created_at < :upper"]
    if cursor is not None:
        where.append("(a.created_at, a.id) > (:cursor_at, :cursor_id)")
    if scope.created_after is not None:
        where.append("a.created_at >= :after")
    if scope.model_version_ids:
        where.append("a.model_version_id = ANY(:model_ids)")
    where.append(
        "NOT EXISTS (SELECT 1 FROM latent_embedding e "
        "WHERE e.asset_id = a.id AND e.encoder_version = :version)"
    )
    return " AND ".join(where)


def _pending_params(
    scope: Scope, upper: datetime, cursor: tuple[datetime, uuid.UUID] | None
) -> dict[str, Any]:
    return {
        "upper": upper,
        "cursor_at": cursor[0] if cursor else None,
        "cursor_id": cursor[1] if cursor else None,
        "after": scope.created_after,
        "model_ids": list(scope.model_version_ids),
        "version": scope.encoder_version,
    }


def _count_pending(
    conn: Connection, scope: Scope, upper: datetime, cursor: tuple[datetime, uuid.UUID] | None
) -> int:
    return int(
        conn.execute(
            text(f"SELECT count(*) FROM audio_asset a WHERE {_pending_sql(scope, cursor)}"),
            _pending_params(scope, upper, cursor),
        ).scalar_one()
    )


def _new_upper_bound(conn: Connection, scope: Scope) -> datetime:
    """Where a new run stops: now (the database's clock), or the scope's end if earlier."""
    upper: datetime = conn.execute(text("SELECT now()")).scalar_one()
    return min(upper, scope.created_before) if scope.created_before is not None else upper


def count_pending(engine: Engine, scope: Scope) -> tuple[int, Run | None, datetime]:
    """Assets the scope still lacks, from where an unfinished run stopped (if there is one),
    with the upper bound the count used."""
    with engine.connect() as conn:
        run = find_open_run(conn, scope)
        upper = run.upper_bound if run else _new_upper_bound(conn, scope)
        return _count_pending(conn, scope, upper, run.cursor if run else None), run, upper


def next_page(
    engine: Engine, scope: Scope, run: Run, cursor: tuple[datetime, uuid.UUID] | None, size: int
) -> list[AssetRef]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT a.id, a.created_at, a.object_key, a.sha256 FROM audio_asset a "
                f"WHERE {_pending_sql(scope, cursor)} ORDER BY a.created_at, a.id LIMIT :n"
            ),
            {**_pending_params(scope, run.upper_bound, cursor), "n": size},
        ).all()
    return [AssetRef(r.id, r.created_at, r.object_key, r.sha256) for r in rows]


# -- fetch, encode, write ---------------------------------------------------------------------
@dataclass
class BatchResult:
    vectors: list[tuple[uuid.UUID, np.ndarray]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    fetch_s: float = 0.0
    encode_s: float = 0.0
    write_s: float = 0.0
    written: int = 0
    path: str = ""  # "copy" (straight in) or "upsert" (through staging, on a conflict)

    def fail(self, ref: AssetRef, reason: str) -> None:
        self.failures.append({"asset_id": str(ref.id), "reason": reason})


def fetch_audio(
    store: ObjectStore, refs: Sequence[AssetRef], threads: int, result: BatchResult
) -> list[tuple[AssetRef, np.ndarray, int]]:
    """Each asset's audio, read and checked against its recorded sha256, in parallel.

    A missing, corrupted or undecodable object is that asset's failure; the store being down
    (StorageUnavailable) stops the batch, since nothing after it could succeed either.
    """
    started = time.perf_counter()

    def one(ref: AssetRef) -> tuple[AssetRef, np.ndarray, int] | str:
        import soundfile

        try:
            data = store.get_bytes(ref.object_key, expected_sha256=ref.sha256)
        except ObjectNotFound:
            return f"audio object {ref.object_key} is missing from the store"
        except ObjectCorrupted as err:
            return str(err)
        try:
            audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=False)
        except (RuntimeError, soundfile.LibsndfileError) as err:
            return f"audio object {ref.object_key} is not readable audio: {err}"
        if audio.size == 0:
            return f"audio object {ref.object_key} has no samples"
        return ref, audio, int(rate)

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(refs)))) as pool:
        outcomes = list(pool.map(one, refs))
    decoded = []
    for ref, outcome in zip(refs, outcomes, strict=True):
        if isinstance(outcome, str):
            result.fail(ref, outcome)
        else:
            decoded.append(outcome)
    result.fetch_s += time.perf_counter() - started
    return decoded


def encode(
    encoder: Encoder, decoded: Sequence[tuple[AssetRef, np.ndarray, int]], result: BatchResult
) -> None:
    """Vectors for the decoded clips; one that is not a finite unit 512-vector is refused."""
    if not decoded:
        return
    started = time.perf_counter()
    vectors = encoder.embed_many([(audio, rate) for _, audio, rate in decoded])
    result.encode_s += time.perf_counter() - started
    for (ref, _, _), vector in zip(decoded, vectors, strict=True):
        problem = vector_problem(np.asarray(vector))
        if problem:
            result.fail(ref, problem)
        else:
            result.vectors.append((ref.id, np.asarray(vector, dtype=np.float32)))


def vector_problem(vector: np.ndarray) -> str | None:
    if vector.shape != (EMBEDDING_DIM,):
        return f"embedding has shape {vector.shape}, expected ({EMBEDDING_DIM},)"
    if not np.all(np.isfinite(vector)):
        return "embedding has NaN or infinite values"
    norm = float(np.linalg.norm(vector))
    if abs(norm - 1.0) > 1e-3:
        return f"embedding norm is {norm:.4f}, expected 1 (L2-normalised)"
    return None


_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no extension
_COPY_TRAILER = b"\xff\xff"


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
    yield _COPY_SIGNATURE
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
    yield _COPY_TRAILER


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
_CHECKPOINT = (
    "UPDATE backfill_run SET cursor_created_at = %(at)s, cursor_id = %(id)s, "
    "written = written + %(w)s, failed = failed + %(f)s, batches = batches + 1, "
    "failures = CASE WHEN jsonb_array_length(failures) < %(cap)s "
    "THEN failures || %(new)s::jsonb ELSE failures END, updated_at = now() "
    "WHERE id = %(run)s AND cursor_id IS NOT DISTINCT FROM %(prev_id)s"
)


def write_batch(
    engine: Engine,
    run: Run,
    expected_cursor: tuple[datetime, uuid.UUID] | None,
    new_cursor: tuple[datetime, uuid.UUID],
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
    import psycopg

    started = time.perf_counter()
    asset_ids = [asset_id for asset_id, _ in result.vectors]
    matrix = (
        np.stack([vector for _, vector in result.vectors])
        if result.vectors
        else np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    )
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert conn is not None
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
                        for chunk in copy_chunks(asset_ids, matrix, run.encoder_version):
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
                cur.execute(_UPSERT, (run.encoder_version,))
                written = max(cur.rowcount, 0)
                result.path = "upsert"
            cur.execute(
                _CHECKPOINT,
                {
                    "at": new_cursor[0],
                    "id": new_cursor[1],
                    "w": written,
                    "f": len(result.failures),
                    "cap": MAX_RECORDED_FAILURES,
                    "new": json.dumps(result.failures),
                    "run": run.id,
                    "prev_id": expected_cursor[1] if expected_cursor else None,
                },
            )
            if cur.rowcount != 1:
                conn.rollback()
                return False
        conn.commit()
    finally:
        raw.close()
    result.written = written
    result.write_s += time.perf_counter() - started
    return True


# -- a whole run, for callers without Prefect (tests, benchmarks) ------------------------------
@dataclass
class Progress:
    """Counters of one invocation, shared with whoever reports progress."""

    planned: int = 0
    done_before: int = 0
    written: int = 0
    failed: int = 0
    batches: int = 0
    fetch_s: float = 0.0
    encode_s: float = 0.0
    write_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, result: BatchResult) -> None:
        with self.lock:
            self.written += result.written
            self.failed += len(result.failures)
            self.batches += 1
            self.fetch_s += result.fetch_s
            self.encode_s += result.encode_s
            self.write_s += result.write_s

    @property
    def fraction(self) -> float:
        total = self.done_before + self.planned
        done = self.done_before + self.written + self.failed
        return 1.0 if total == 0 else min(1.0, done / total)

    def stats(self) -> dict[str, float | int]:
        return {
            "written": self.written,
            "failed": self.failed,
            "batches": self.batches,
            "fetch_s": round(self.fetch_s, 3),
            "encode_s": round(self.encode_s, 3),
            "write_s": round(self.write_s, 3),
        }


def process_batch(
    engine: Engine,
    store: ObjectStore,
    encoder: Encoder,
    run: Run,
    refs: Sequence[AssetRef],
    expected_cursor: tuple[datetime, uuid.UUID] | None,
    threads: int,
    device_slot: AbstractContextManager[Any] | None = None,
    window: int = 64,
) -> BatchResult:
    """Read and encode the batch a window at a time, then commit it in one transaction.

    A batch is the unit of commit and checkpoint (large, so writes go in bulk); a window is the
    unit of memory (only its decoded audio is held: a batch of long clips never is). The next
    window is read while this one is encoded. The device slot is held for the batch's encoding.
    """
    result = BatchResult()
    windows = [refs[i : i + window] for i in range(0, len(refs), window)]
    with ThreadPoolExecutor(max_workers=1) as reader, device_slot or nullcontext():
        upcoming = reader.submit(fetch_audio, store, windows[0], threads, result)
        for position in range(len(windows)):
            decoded = upcoming.result()
            if position + 1 < len(windows):
                upcoming = reader.submit(fetch_audio, store, windows[position + 1], threads, result)
            encode(encoder, decoded, result)
    last = refs[-1]
    if not write_batch(engine, run, expected_cursor, (last.created_at, last.id), result):
        # An earlier attempt of this batch committed: its figures are already on the run.
        result.failures.clear()
        result.vectors.clear()
    return result


def estimate(
    engine: Engine,
    store: ObjectStore,
    encoder: Encoder,
    scope: Scope,
    sample: int,
    threads: int,
) -> dict[str, Any]:
    """What a run would do, writing nothing: how many assets, and the time, measured by reading
    and encoding a sample of them (the write is estimated from nothing: it is the cheap part)."""
    pending, run, upper = count_pending(engine, scope)
    out: dict[str, Any] = {
        "encoder_version": scope.encoder_version,
        "assets": pending,
        "resumes_run": str(run.id) if run else None,
        "sampled": 0,
        "seconds_per_asset": None,
        "estimated_seconds": 0.0,
    }
    if pending == 0 or sample <= 0:
        return out
    probe = run or Run(uuid.UUID(int=0), scope.encoder_version, upper, None, 0, 0, 0, 0, False)
    refs = next_page(engine, scope, probe, run.cursor if run else None, sample)
    result = BatchResult()
    decoded = fetch_audio(store, refs, threads, result)
    encode(encoder, decoded, result)
    per_asset = (result.fetch_s + result.encode_s) / max(1, len(refs))
    out.update(
        sampled=len(refs),
        sample_failures=result.failures,
        seconds_per_asset=round(per_asset, 6),
        estimated_seconds=round(per_asset * pending, 3),
    )
    return out


# One batch: (run, the batch's assets, the cursor it starts from) -> what it did.
BatchFn = Callable[[Run, Sequence[AssetRef], tuple[datetime, uuid.UUID] | None], BatchResult]


def run_backfill(
    engine: Engine,
    scope: Scope,
    process: BatchFn,
    batch_size: int,
    limit: int | None = None,
    on_progress: Callable[[Run, Progress], None] | None = None,
) -> tuple[Run, Progress, str]:
    """Open (or resume) the scope's run and process batches until done or `limit` assets.

    `process(run, refs, expected_cursor)` does one batch (a Prefect task in the flow, a plain
    call elsewhere). Returns the run, this invocation's progress and the run's final status:
    `completed`, or `stopped` when the limit ended it (the next invocation resumes).
    """
    with exclusive(engine, scope):
        run = open_run(engine, scope)
        progress = Progress(planned=run.planned - run.written - run.failed)
        progress.done_before = run.written + run.failed
        cursor = run.cursor
        status = "completed"
        try:
            while True:
                size = batch_size
                if limit is not None:
                    size = min(size, limit - progress.written - progress.failed)
                    if size <= 0:
                        # The limit may land exactly on the last asset: only an empty page
                        # says the run is done.
                        more = next_page(engine, scope, run, cursor, 1)
                        status = "stopped" if more else "completed"
                        break
                refs = next_page(engine, scope, run, cursor, size)
                if not refs:
                    break
                result = process(run, refs, cursor)
                progress.add(result)
                cursor = (refs[-1].created_at, refs[-1].id)
                if on_progress is not None:
                    on_progress(run, progress)
        except BaseException as err:
            finish_run(engine, run.id, "stopped", f"{type(err).__name__}: {err}"[:2000])
            raise
        finish_run(engine, run.id, status)
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE backfill_run SET stats = CAST(:s AS jsonb) WHERE id = :id"),
                {"s": json.dumps(progress.stats()), "id": run.id},
            )
    return run, progress, status


def latest_progress(engine: Engine, scope: Scope) -> dict[str, Any] | None:
    """The scope's newest run's counters (for a progress bar polling from another thread)."""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT id, status, planned, written, failed FROM backfill_run "
                "WHERE encoder_version = :v AND scope = :s ORDER BY updated_at DESC LIMIT 1"
            ),
            {"v": scope.encoder_version, "s": scope.digest},
        ).first()
    return dict(row._mapping) if row else None


def coverage(engine: Engine, current_version: str | None = None) -> dict[str, Any]:
    """Embeddings per encoder version against all assets, their indexes, and recent runs."""
    from infra.db import plain_row
    from tasks.vector_index import list_indexes

    with engine.connect() as conn:
        assets = int(conn.execute(text("SELECT count(*) FROM audio_asset")).scalar_one())
        counts = conn.execute(
            text(
                "SELECT encoder_version, count(*) AS n, min(created_at) AS first, "
                "max(created_at) AS last FROM latent_embedding GROUP BY encoder_version "
                "ORDER BY encoder_version"
            )
        ).all()
        indexes = {i.encoder_version: i for i in list_indexes(conn)}
        runs = conn.execute(
            text(
                "SELECT id, encoder_version, status, planned, written, failed, batches, "
                "created_at, updated_at, finished_at, error, "
                "jsonb_path_query_array(failures, '$[0 to 19]') AS failures FROM backfill_run "
                "ORDER BY updated_at DESC LIMIT 10"
            )
        ).all()
    versions = []
    names = {r.encoder_version for r in counts} | ({current_version} if current_version else set())
    by_version = {r.encoder_version: r for r in counts}
    for version in sorted(names):
        row = by_version.get(version)
        index = indexes.get(version)
        n = int(row.n) if row else 0
        versions.append(
            {
                "encoder_version": version,
                "current": version == current_version,
                "embeddings": n,
                "coverage": round(n / assets, 4) if assets else None,
                "missing": max(assets - n, 0),
                "index": index.to_dict() if index else None,
                "newest": row.last.isoformat() if row else None,
            }
        )
    return {
        "assets": assets,
        "versions": versions,
        "runs": [plain_row(r) for r in runs],
    }

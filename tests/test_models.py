"""Tables: lifecycle policies, ids, and pgvector through the ORM and through binary COPY."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from stave.models import (
    EMBEDDING_DIM,
    AudioAsset,
    GenerationJob,
    GenerationTask,
    LatentEmbedding,
    lifecycle_policies,
    policy_for,
)
from stave.models.base import new_id


def test_every_table_declares_a_lifecycle_policy() -> None:
    from sqlmodel import SQLModel

    policies = lifecycle_policies()
    assert set(policies) == set(SQLModel.metadata.tables)
    task = policy_for("generation_task")
    assert (task.action, task.hot_days, task.timestamp_column) == ("archive", 183, "created_at")
    assert set(task.travels_with) == {"task_event", "audio_asset", "latent_embedding"}
    for name in task.travels_with:
        follows = policies[name].follows
        assert policies[name].action == "follow" and follows is not None
    assert policy_for("model_version").action == "keep"
    assert GenerationTask.__lifecycle__ is task  # type: ignore[attr-defined]
    with pytest.raises(KeyError):
        policy_for("no_such_table")


def test_ids_are_time_ordered_uuid7() -> None:
    ids = [new_id() for _ in range(1000)]
    assert all(i.version == 7 for i in ids)
    assert len(set(ids)) == 1000
    stamps = [i.int >> 80 for i in ids]
    assert stamps == sorted(stamps)


def _task(session: Session) -> GenerationTask:
    job = GenerationJob(submitted_by="u1")
    task = GenerationTask(
        job_id=job.id, user_id="u1", prompt="bell arpeggio", idempotency_key=uuid.uuid4().hex
    )
    session.add(job)
    session.add(task)
    session.flush()
    return task


@pytest.mark.integration
def test_embedding_round_trips_through_the_orm(engine: Engine) -> None:
    vector = np.random.default_rng(0).standard_normal(EMBEDDING_DIM).astype(np.float32)
    vector /= np.linalg.norm(vector)
    with Session(engine) as session:
        task = _task(session)
        asset = AudioAsset(
            task_id=task.id,
            user_id="u1",
            object_key=f"dev/audio/{new_id()}.flac",
            sha256="a" * 64,
            bytes=10,
            format="flac",
            sample_rate=44100,
            channels=1,
            duration_s=1.0,
        )
        session.add(asset)
        session.flush()
        session.add(LatentEmbedding(asset_id=asset.id, encoder_version="v1", embedding=vector))
        session.flush()
        stored = session.exec(
            select(LatentEmbedding).where(LatentEmbedding.asset_id == asset.id)
        ).one()
        assert np.allclose(stored.embedding, vector)
        nearest = session.exec(
            select(LatentEmbedding.asset_id)
            .order_by(LatentEmbedding.embedding.cosine_distance(vector))
            .limit(1)  # type: ignore[attr-defined]
        ).one()
        assert nearest == asset.id
        session.rollback()


@pytest.mark.integration
def test_binary_copy_of_vectors_uses_the_registered_type(engine: Engine) -> None:
    """Every pooled connection has pgvector registered, so raw psycopg COPY takes numpy."""
    vectors = np.random.default_rng(1).standard_normal((50, EMBEDDING_DIM)).astype(np.float32)
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert conn is not None
        with conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE tmp_vectors (embedding vector(512))")
            with cur.copy("COPY tmp_vectors (embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["vector"])
                for row in vectors:
                    copy.write_row([row])
            cur.execute("SELECT embedding FROM tmp_vectors")
            back = np.array([r[0].to_numpy() for r in cur.fetchall()])  # pgvector.Vector
        conn.rollback()
    finally:
        raw.close()
    assert back.shape == (50, EMBEDDING_DIM) and np.allclose(back, vectors)


@pytest.mark.integration
def test_task_status_and_error_class_are_constrained(engine: Engine) -> None:
    from sqlalchemy.exc import IntegrityError

    for field, value in (("status", "exploded"), ("error_class", "gremlins")):
        with Session(engine) as session:
            task = _task(session)
            setattr(task, field, value)
            session.add(task)
            with pytest.raises(IntegrityError, match=f"ck_generation_task_{field}"):
                session.flush()
            session.rollback()

"""Training as a deployment: the built-in generator trained on a GPU worker, its checkpoint and
model card published to the object store where every worker can load them.

The run's folder (`<home>/<env>/data/models/<run_name>`) holds the resumable training state:
running the deployment again with the same run name continues where a crashed run stopped.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any, Literal

from prefect import flow, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from stave.flows import names
from stave.flows.logs import run_logger
from stave.generator.checkpoint import model_card_path
from stave.generator.train import autoencoder_source_path, train
from stave.generator.train_config import TrainConfig
from stave.infra.errors import InvalidInput
from stave.infra.objectstore import make_object_store
from stave.infra.objectstore.keys import model_key
from stave.infra.settings import get_settings

RUN_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
# Progress is written at most this often: every optimiser step would be thousands of writes.
PROGRESS_EVERY_S = 5.0


def train_config(
    clips: int,
    clip_seconds: float,
    ae_steps: int,
    embedding_steps: int,
    denoiser_steps: int,
    seed: int,
    overrides: dict[str, Any] | None,
) -> Any:
    """The TrainConfig for these parameters; an unknown or mistyped override is one line."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = {
        "corpus_clips": clips,
        "clip_seconds": clip_seconds,
        "ae_steps": ae_steps,
        "embedding_steps": embedding_steps,
        "denoiser_steps": denoiser_steps,
        "corpus_seed": seed,
        "seed": seed,
    }
    for name, value in (overrides or {}).items():
        if name not in fields or name == "autoencoder":
            known = ", ".join(sorted(n for n in fields if n != "autoencoder"))
            raise InvalidInput(f"overrides: unknown training setting {name!r} (known: {known})")
        default = getattr(TrainConfig(), name)
        if isinstance(default, bool) != isinstance(value, bool) or not isinstance(
            value, (int, float) if isinstance(default, float) else type(default)
        ):
            raise InvalidInput(f"overrides: {name} must be {type(default).__name__}, got {value!r}")
        values[name] = value
    return TrainConfig(**values)


@task(name="train-model", cache_policy=NO_CACHE)
def train_model(out_dir: Path, cfg: Any, device: str, autoencoder_from: Path | None = None) -> Path:
    progress_id: Any = create_progress_artifact(progress=0.0, description="training: all phases")
    total = cfg.denoiser_steps
    if autoencoder_from is None:
        total += cfg.ae_steps + cfg.embedding_steps
    offsets = {
        "autoencoder": 0,
        "embedding": cfg.ae_steps,
        "denoiser": total - cfg.denoiser_steps,
    }
    log = run_logger("stave.flows.train")
    last = 0.0

    def progress(phase: str, step: int, phase_total: int, losses: dict[str, float]) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < PROGRESS_EVERY_S and step != phase_total:
            return
        last = now
        done = offsets.get(phase, 0) + step
        update_progress_artifact(progress_id, progress=round(100 * done / max(total, 1), 1))
        shown = " ".join(f"{k}={v:.4f}" for k, v in losses.items())
        log.info("%s %d/%d %s", phase, step, phase_total, shown)

    return train(out_dir, cfg, device=device, progress=progress, autoencoder_from=autoencoder_from)


@task(name="publish-checkpoint", cache_policy=NO_CACHE)
def publish_checkpoint(checkpoint: Path) -> dict[str, Any]:
    """Copy the checkpoint and its card to `<env>/models/` (named by content, never by user
    text), where `stave models fetch` finds them."""
    card_path = model_card_path(checkpoint)
    card = json.loads(card_path.read_text())
    sha256 = str(card["sha256"])
    settings = get_settings()
    store = make_object_store(settings)
    checkpoint_key = model_key(settings.env, sha256, "pt")
    card_key = model_key(settings.env, sha256, "json")
    with open(checkpoint, "rb") as handle:
        stored = store.put_stream(checkpoint_key, handle)
    # The card last: a listed card always has its checkpoint beside it.
    with open(card_path, "rb") as handle:
        store.put_stream(card_key, handle, content_type="application/json")
    return {
        "checkpoint": str(checkpoint),
        "object_key": checkpoint_key,
        "model_card_key": card_key,
        "sha256": sha256,
        "bytes": stored.size,
        "final_losses": card.get("final_losses", {}),
    }


@flow(name="train", log_prints=True, flow_run_name=names.train)
def train_generator(
    run_name: str = "default",
    clips: int = 1280,
    clip_seconds: float = 10.0,
    ae_steps: int = 1400,
    embedding_steps: int = 300,
    denoiser_steps: int = 4000,
    seed: int = 0,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    overrides: dict[str, Any] | None = None,
    autoencoder_from: str | None = None,
) -> dict[str, Any]:
    """Train the built-in generator (autoencoder, embedding head, then denoiser) and publish
    its checkpoint and model card to the object store under <env>/models/.

    Args:
        run_name: Folder of this training run under the data folder's models/; running again
            with the same name resumes it.
        clips: Corpus clips rendered for training.
        clip_seconds: Length of each corpus clip.
        ae_steps: Autoencoder optimiser steps.
        embedding_steps: Embedding-head optimiser steps.
        denoiser_steps: Denoiser optimiser steps.
        seed: Corpus and initialisation seed.
        device: auto (CUDA when the worker has one), cpu or cuda.
        overrides: Advanced: other training settings by name (e.g. {"denoiser_batch": 16}).
        autoencoder_from: Keep this checkpoint's autoencoder and train only the denoiser:
            "shipped" for the packaged model, or a checkpoint path on the worker. Embeddings
            already stored stay comparable with the new model's.
    """
    if not RUN_NAME.match(run_name):
        raise InvalidInput(
            f"run_name {run_name!r}: use lower-case letters, digits, '.', '_' or '-' (<= 64)"
        )
    cfg = train_config(
        clips, clip_seconds, ae_steps, embedding_steps, denoiser_steps, seed, overrides
    )

    source = autoencoder_source_path(autoencoder_from)
    if source is not None and not source.is_file():
        raise InvalidInput(f"autoencoder_from: no checkpoint at {source}")
    out_dir = get_settings().data_dir / "models" / run_name
    checkpoint = train_model(out_dir, cfg, device, source)
    return publish_checkpoint(checkpoint)

"""Inference: the model, loaded once per worker process, and the provenance of every clip.

The generator is kept for the life of the process (a worker serves many batches); the first
batch pays the load, no later one does. Each clip's provenance holds what ACE-Step writes in its
params JSON — prompt, lyrics, duration, steps, guidance, scheduler, the seed actually used,
timings per stage — plus the model version, checkpoint sha256, code version, device, dtype and
library versions: everything `stave regenerate --verify` needs to make the same bytes again.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import subprocess
import threading
import uuid
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy
from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.generator import PACKAGED_CHECKPOINT
from stave.infra.errors import ConfigError
from stave.infra.settings import Settings
from stave.models.base import new_id
from stave.tasks.queue import ClaimedTask

_lock = threading.Lock()
_loaded: dict[tuple[str, str, str], LoadedModel] = {}
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class LoadedModel:
    generator: Any  # StaveGenerator or AceStepGenerator
    name: str
    version: str
    checkpoint_uri: str
    sha256: str
    config: dict[str, Any]

    @property
    def encoder_version(self) -> str:
        # Embeddings come from the built-in autoencoder whichever model generates.
        return f"stave-ae-{self.sha256[:12]}"

    def batch_size(self, duration_s: float) -> int:
        gen = self.generator
        if hasattr(gen, "batch_size") and hasattr(gen, "frame_rate"):
            return int(gen.batch_size(max(1, round(duration_s * gen.frame_rate))))
        return 1


def check_generator(settings: Settings) -> None:
    """Refuse settings no model load could satisfy, before anything is submitted or started:
    a checkpoint file that is not there, ACE-Step without its checkpoint folder or package,
    a CUDA device on a machine without one. Loads no model."""
    if settings.checkpoint is not None and not settings.checkpoint.is_file():
        raise ConfigError(f"STAVE_CHECKPOINT {settings.checkpoint}: no such file")
    if settings.generator == "acestep":
        folder = settings.acestep_checkpoint_dir
        if folder is None:
            raise ConfigError(
                "STAVE_GENERATOR=acestep needs STAVE_ACESTEP_CHECKPOINT_DIR (the local ACE-Step "
                "checkpoint folder), or unset STAVE_GENERATOR for the built-in model"
            )
        if not folder.is_dir():
            raise ConfigError(f"STAVE_ACESTEP_CHECKPOINT_DIR {folder}: no such folder")
        if importlib.util.find_spec("acestep") is None:
            raise ConfigError(
                "STAVE_GENERATOR=acestep: the ace-step package is not installed "
                "(pip install 'stave[acestep]')"
            )
    check_device(settings.device)


def check_device(device: str) -> None:
    """A CUDA device asked for on a machine that has none: one line, not a failed load."""
    if device.startswith("cuda"):
        import torch  # lazy: only when CUDA is asked for

        if not torch.cuda.is_available():
            raise ConfigError(f"device {device}: this machine has no CUDA device (use auto or cpu)")


def load_model(settings: Settings, checkpoint: Path | None = None) -> LoadedModel:
    """The process's model for these settings, loaded on first use and kept."""
    path = checkpoint or settings.checkpoint
    key = (settings.generator, str(path or ""), settings.device)
    with _lock:
        if key not in _loaded:
            _loaded[key] = _load(settings, path)
        return _loaded[key]


def _load(settings: Settings, path: Path | None) -> LoadedModel:
    from stave.generator.pipeline import StaveGenerator  # torch

    builtin = StaveGenerator.load(
        path, device=settings.device, max_batch=settings.batch_size or None
    )
    uri = f"file://{Path(path).resolve()}" if path else f"package:{PACKAGED_CHECKPOINT.name}"
    if settings.generator == "acestep":
        from stave.generator.acestep import AceStepGenerator

        if settings.acestep_checkpoint_dir is None:
            raise ConfigError("STAVE_GENERATOR=acestep needs STAVE_ACESTEP_CHECKPOINT_DIR")
        acestep = AceStepGenerator(
            settings.acestep_checkpoint_dir, embedder=builtin, device=settings.device
        )
        directory = settings.acestep_checkpoint_dir.resolve()
        return LoadedModel(
            generator=acestep,
            name="ace-step",
            version=directory.name[:64],
            checkpoint_uri=f"file://{directory}",
            sha256=builtin.sha256,
            config={"checkpoint_dir": str(directory), "embedder": builtin.meta},
        )
    return LoadedModel(
        generator=builtin,
        name=builtin.name,
        version=builtin.sha256[:12],
        checkpoint_uri=uri,
        sha256=builtin.sha256,
        config=builtin.meta,
    )


def current_encoder_version(settings: Settings) -> str:
    """The configured checkpoint's encoder version, read from its model card: no model load,
    so a search by asset id answers in milliseconds."""
    path = settings.checkpoint or PACKAGED_CHECKPOINT
    try:
        sha = str(json.loads(path.with_suffix(".json").read_text())["sha256"])
    except (OSError, ValueError, KeyError):
        return load_model(settings).encoder_version  # the load says what is wrong
    return f"stave-ae-{sha[:12]}"


def register_model_version(engine: Engine, model: LoadedModel) -> uuid.UUID:
    """The model_version row for this checkpoint, made on first use (idempotent)."""
    with engine.begin() as conn:
        found = conn.execute(
            text(
                "INSERT INTO model_version (id, name, version, checkpoint_uri, checkpoint_sha256, "
                "config, code_version, created_at) VALUES (:id, :name, :version, :uri, :sha, "
                "CAST(:config AS jsonb), :code, now()) "
                "ON CONFLICT (name, version) DO UPDATE SET name = EXCLUDED.name RETURNING id"
            ),
            {
                "id": new_id(),
                "name": model.name,
                "version": model.version,
                "uri": model.checkpoint_uri,
                "sha": model.sha256,
                "config": _json(model.config),
                "code": code_version(),
            },
        ).scalar_one()
    return uuid.UUID(str(found))


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO_ROOT), *args],
        capture_output=True,
        text=True,
        timeout=5,
        check=True,
    ).stdout.strip()


@functools.cache
def code_version() -> str:
    """The git commit this code runs from (with '+dirty' if changed), else the package version."""
    try:
        sha = _git("rev-parse", "--short=12", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        return f"git:{sha}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return f"stave:{version('stave')}"


@functools.cache
def library_versions() -> dict[str, str]:
    import soundfile
    import torch

    return {
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "soundfile": soundfile.__version__,
        "libsndfile": soundfile.__libsndfile_version__,
        "cuda": torch.version.cuda or "",
    }


def requests_for(tasks: list[ClaimedTask]) -> list[Any]:
    from stave.generator.pipeline import GenerationRequest  # torch

    return [
        GenerationRequest(
            prompt=t.prompt,
            duration_s=float(t.parameters["duration_s"]),
            steps=int(t.parameters["steps"]),
            guidance=float(t.parameters["guidance"]),
            scheduler=str(t.parameters["scheduler"]),
            seed=int(t.parameters["seed"]),
            lyrics=t.lyrics,
        )
        for t in tasks
    ]


def provenances(
    batch: Any, model: LoadedModel, model_version_id: uuid.UUID
) -> list[dict[str, Any]]:
    """Each clip's generation record, in the batch's order, for one `MadeBatch`; the batch
    is named by a key made once (its members' requests hashed), not listed in every record."""
    key = batch_key(batch.members)
    size = len(batch.members)
    return [
        _provenance(request, member.seed, batch, model, model_version_id, (key, row, size))
        for row, (request, member) in enumerate(zip(batch.requests, batch.members, strict=True))
    ]


def batch_key(members: Any) -> str:
    """What identifies a batch: its requests (prompt, length, guidance, steps, scheduler, seed)
    in order, hashed. Two batches with one key made the same requests: either replays both."""
    canonical = json.dumps(
        [[m.prompt, m.duration_s, m.guidance, m.steps, m.scheduler, m.seed] for m in members],
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _provenance(
    request: Any,
    seed: int,
    batch: Any,
    model: LoadedModel,
    model_version_id: uuid.UUID,
    place: tuple[str, int, int],
) -> dict[str, Any]:
    """One clip's record; `place` is its batch's key, its position and the batch's size."""
    key, position, size = place
    return {
        # As ACE-Step's params JSON records a generation.
        "prompt": request.prompt,
        "lyrics": request.lyrics or "",
        "audio_duration": request.duration_s,
        "infer_step": request.steps,
        "guidance_scale": request.guidance,
        "scheduler_type": request.scheduler,
        "actual_seeds": [seed],
        "timecosts": {k: round(v, 6) for k, v in batch.timings.items()},
        # What it takes to make the same bytes again.
        "model_name": model.name,
        "model_version": model.version,
        "model_version_id": str(model_version_id),
        "checkpoint_uri": model.checkpoint_uri,
        "checkpoint_sha256": model.sha256,
        "code_version": code_version(),
        "device": batch.device,
        "dtype": batch.dtype,
        "sample_rate": batch.sample_rate,
        "libraries": library_versions(),
        # The batch it was computed in (rounding depends on it), replayed by regenerate: its
        # key, this clip's place and the batch's size. The other members' requests are their
        # own tasks' records (listing them in every record grew with the square of the batch:
        # 8 KB a task at 64, 60 KB at 512).
        "batch": {"key": key, "position": position, "size": size},
    }

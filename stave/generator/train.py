"""Training: corpus -> autoencoder -> embedding head -> denoiser, resumable, with progress.

State (models, optimisers, step, losses) is saved atomically every `checkpoint_every` steps to
`<out>/train_state.pt`; running again with the same output folder resumes where it stopped.
The result is `<out>/stave-small.pt` and its model card `<out>/stave-small.json`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stave.generator import train_autoencoder as tae
from stave.generator.autoencoder import Autoencoder
from stave.generator.checkpoint import PACKAGED, load_checkpoint, model_card_path, save_checkpoint
from stave.generator.denoiser import Denoiser
from stave.generator.errors import CheckpointError
from stave.generator.pool import CorpusPool
from stave.generator.synth import SAMPLE_RATE
from stave.generator.train_config import TrainConfig
from stave.generator.train_denoiser import DenoiserData, denoiser_step, make_denoiser

PHASES = ("autoencoder", "embedding", "denoiser")
Progress = Callable[[str, int, int, dict[str, float]], None]


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


class Trainer:
    def __init__(self, out_dir: Path, cfg: TrainConfig, device: torch.device) -> None:
        self.out = out_dir
        self.cfg = cfg
        self.device = device
        self.state_path = out_dir / "train_state.pt"
        torch.manual_seed(cfg.seed)
        self.ae = Autoencoder(cfg.autoencoder).to(device)
        self.ae_opt = torch.optim.AdamW(
            [*self.ae.encoder.parameters(), *self.ae.decoder.parameters()], cfg.ae_lr
        )
        self.head_opt = torch.optim.AdamW(self.ae.embedder.parameters(), 1e-3)
        self.denoiser: Denoiser | None = None
        self.den_opt: torch.optim.Optimizer | None = None
        self.latent_stats: tuple[torch.Tensor, torch.Tensor] | None = None
        self.phase = PHASES[0]
        self.step = 0
        self.history: dict[str, list[dict[str, float]]] = {p: [] for p in PHASES}
        # Where the autoencoder came from when the run started from another checkpoint's.
        self.autoencoder_source: dict[str, str] | None = None
        self.started = time.time()

    # -- persistence --------------------------------------------------------------------------
    def save(self) -> None:
        state = {
            "config": self.cfg.as_dict(),
            "phase": self.phase,
            "step": self.step,
            "ae": self.ae.state_dict(),
            "ae_opt": self.ae_opt.state_dict(),
            "head_opt": self.head_opt.state_dict(),
            "denoiser": self.denoiser.state_dict() if self.denoiser is not None else None,
            "den_opt": self.den_opt.state_dict() if self.den_opt is not None else None,
            "history": self.history,
            "rng": torch.get_rng_state(),
            "latent_stats": self.latent_stats,
            "autoencoder_source": self.autoencoder_source,
        }
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.state_path)

    def resume(self) -> bool:
        if not self.state_path.exists():
            return False
        state = torch.load(self.state_path, map_location=self.device, weights_only=False)
        self.ae.load_state_dict(state["ae"])
        self.ae_opt.load_state_dict(state["ae_opt"])
        self.head_opt.load_state_dict(state["head_opt"])
        self.phase, self.step, self.history = state["phase"], state["step"], state["history"]
        self.latent_stats = state.get("latent_stats")
        self.autoencoder_source = state.get("autoencoder_source")
        torch.set_rng_state(state["rng"].cpu())
        if state["denoiser"] is not None:
            self._make_denoiser()
            assert self.denoiser is not None and self.den_opt is not None
            self.denoiser.load_state_dict(state["denoiser"])
            self.den_opt.load_state_dict(state["den_opt"])
        return True

    def _make_denoiser(self) -> None:
        self.denoiser, self.den_opt = make_denoiser(self.cfg, self.device)

    # -- phases -------------------------------------------------------------------------------
    def run(self, pool: CorpusPool, progress: Progress, until: str = "denoiser") -> None:
        for phase in PHASES[PHASES.index(self.phase) : PHASES.index(until) + 1]:
            if phase != self.phase:
                self.phase, self.step = phase, 0
            self._run_phase(phase, pool, progress)
        self.save()

    def _run_phase(self, phase: str, pool: CorpusPool, progress: Progress) -> None:
        cfg = self.cfg
        rng = np.random.default_rng(cfg.seed * 1000 + PHASES.index(phase) * 100 + self.step)
        if phase == "autoencoder":
            total, lr = cfg.ae_steps, cfg.ae_lr

            def step() -> dict[str, float]:
                return tae.autoencoder_step(
                    self.ae,
                    self.ae_opt,
                    pool,
                    rng,
                    batch=cfg.ae_batch,
                    frames=cfg.ae_frames,
                    device=self.device,
                )

            opt: torch.optim.Optimizer = self.ae_opt
        elif phase == "embedding":
            total, lr, opt = cfg.embedding_steps, 1e-3, self.head_opt

            def step() -> dict[str, float]:
                return tae.embedding_step(
                    self.ae,
                    self.head_opt,
                    pool,
                    rng,
                    batch=32,
                    frames=cfg.ae_frames * 2,
                    device=self.device,
                )
        else:
            if self.step >= cfg.denoiser_steps and self.latent_stats is not None:
                return  # finished before: nothing to encode again
            if self.denoiser is None:
                self._make_denoiser()
            assert self.denoiser is not None and self.den_opt is not None
            data = DenoiserData.build(self.ae, pool, self.device)
            self.latent_stats = (data.mean, data.std)
            total, lr, opt = cfg.denoiser_steps, cfg.denoiser_lr, self.den_opt
            den, den_opt = self.denoiser, self.den_opt

            def step() -> dict[str, float]:
                return denoiser_step(
                    den,
                    den_opt,
                    data,
                    rng,
                    batch=cfg.denoiser_batch,
                    frames=cfg.denoiser_frames,
                    device=self.device,
                )

        while self.step < total:
            for group in opt.param_groups:  # cosine decay, 3% warm-up
                warm = min(1.0, (self.step + 1) / max(1, total // 33))
                group["lr"] = lr * warm * 0.5 * (1 + np.cos(np.pi * self.step / total))
            losses = step()
            self.step += 1
            if self.step % 10 == 0 or self.step == total:
                self.history[phase].append({"step": self.step, **losses})
            progress(phase, self.step, total, losses)
            if self.step % cfg.checkpoint_every == 0:
                self.save()
        self.save()


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def checkpoint_payload(trainer: Trainer) -> dict[str, Any]:
    """What the shipped checkpoint holds: weights, configs, latent statistics, metadata."""
    assert trainer.denoiser is not None and trainer.latent_stats is not None

    denoiser_cfg = trainer.denoiser.cfg.as_dict()
    return {
        "autoencoder_config": trainer.cfg.autoencoder.as_dict(),
        "denoiser_config": denoiser_cfg,
        "autoencoder": {k: v.cpu() for k, v in trainer.ae.state_dict().items()},
        "denoiser": {k: v.cpu() for k, v in trainer.denoiser.state_dict().items()},
        "latent_mean": trainer.latent_stats[0].cpu(),
        "latent_std": trainer.latent_stats[1].cpu(),
        "meta": {
            "name": "stave-small",
            "sample_rate": SAMPLE_RATE,
            "train_config": json.loads(json.dumps(trainer.cfg.as_dict())),
        },
    }


def model_card(trainer: Trainer, sha256: str, seconds: float) -> dict[str, Any]:
    def last(phase: str) -> dict[str, float]:
        return trainer.history[phase][-1] if trainer.history[phase] else {}

    assert trainer.denoiser is not None
    params = {
        "autoencoder": sum(p.numel() for p in trainer.ae.parameters()),
        "denoiser": sum(p.numel() for p in trainer.denoiser.parameters()),
    }
    return {
        "name": "stave-small",
        "sha256": sha256,
        "sample_rate": SAMPLE_RATE,
        "latent": {
            "channels": trainer.cfg.autoencoder.latent_channels,
            "compression": trainer.cfg.autoencoder.compression,
        },
        "architecture": {
            "autoencoder": trainer.cfg.autoencoder.as_dict(),
            "denoiser": trainer.denoiser.cfg.as_dict(),
            "parameters": params,
        },
        "corpus": {
            "seed": trainer.cfg.corpus_seed,
            "clips": trainer.cfg.corpus_clips,
            "clip_seconds": trainer.cfg.clip_seconds,
        },
        "training": {
            "config": trainer.cfg.as_dict(),
            "device": str(trainer.device),
            "seconds": round(seconds, 1),
            "torch": torch.__version__,
        },
        "autoencoder_from": trainer.autoencoder_source,
        "final_losses": {phase: last(phase) for phase in PHASES},
        "loss_history": trainer.history,
    }


def autoencoder_source_path(name: str | None) -> Path | None:
    """'shipped' is the packaged checkpoint; anything else is a path (checked when loaded)."""
    if name is None:
        return None
    return PACKAGED if name == "shipped" else Path(name)


def start_from_autoencoder(trainer: Trainer, checkpoint: Path) -> None:
    """Begin at the denoiser phase with the (verified) autoencoder of an earlier checkpoint.

    A new denoiser on an unchanged autoencoder keeps the latent space, and so the 512-d
    embedding space: vectors already stored for sounds-alike search stay comparable.
    """
    payload = load_checkpoint(checkpoint)
    if payload["autoencoder_config"] != trainer.cfg.autoencoder.as_dict():
        raise CheckpointError(
            f"checkpoint {checkpoint} has autoencoder {payload['autoencoder_config']}, "
            f"not the configured {trainer.cfg.autoencoder.as_dict()}"
        )
    trainer.ae.load_state_dict(payload["autoencoder"])
    trainer.phase, trainer.step = "denoiser", 0
    card = json.loads(model_card_path(checkpoint).read_text())
    for phase in ("autoencoder", "embedding"):  # the card keeps the phases' figures
        trainer.history[phase] = card.get("loss_history", {}).get(phase, [])
    trainer.autoencoder_source = {"checkpoint": checkpoint.name, "sha256": payload["sha256"]}


def train(
    out_dir: Path,
    cfg: TrainConfig | None = None,
    *,
    device: str = "auto",
    progress: Progress | None = None,
    autoencoder_from: Path | None = None,
) -> Path:
    """Train (or resume) into `out_dir`; return the checkpoint path (model card beside it).

    With `autoencoder_from`, a fresh run takes that checkpoint's autoencoder and embedding head
    and trains only the denoiser.
    """
    cfg = cfg or TrainConfig()
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(out_dir, cfg, pick_device(device))
    if not trainer.resume() and autoencoder_from is not None:
        start_from_autoencoder(trainer, autoencoder_from)
        trainer.save()  # a resumed run must not go back to training the autoencoder
    started = time.time()
    pool = CorpusPool.render(cfg.corpus_seed, cfg.corpus_clips, cfg.clip_seconds)
    trainer.run(pool, progress or (lambda *_: None))
    checkpoint = out_dir / "stave-small.pt"
    sha256 = save_checkpoint(checkpoint, checkpoint_payload(trainer))
    write_json(model_card_path(checkpoint), model_card(trainer, sha256, time.time() - started))
    return checkpoint

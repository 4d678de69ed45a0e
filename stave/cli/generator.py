"""`stave train` and `stave eval`: the built-in generator, trained and measured."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from stave.cli.common import JSON_HELP, Device, print_json, settings
from stave.infra.errors import InvalidInput
from stave.tasks.inference import check_device


def train(
    out: Path | None = typer.Option(
        None, "--out", help="Output folder (default: <home>/<env>/data/models)."
    ),
    device: Device = typer.Option(Device.auto, help="Where to train."),
    clips: int = typer.Option(1280, min=8, help="Corpus clips rendered for training."),
    ae_steps: int = typer.Option(1400, min=1, help="Autoencoder steps."),
    embedding_steps: int = typer.Option(300, min=1, help="Embedding-head steps."),
    denoiser_steps: int = typer.Option(4000, min=1, help="Denoiser steps."),
    seed: int = typer.Option(0, help="Corpus and initialisation seed."),
    autoencoder_from: str | None = typer.Option(
        None,
        "--autoencoder-from",
        help="Keep this checkpoint's autoencoder ('shipped' or a path) and train only the "
        "denoiser: stored embeddings stay comparable.",
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Train the built-in generator (autoencoder, then denoiser); resumes an interrupted run."""
    from stave.generator.train import autoencoder_source_path  # torch
    from stave.generator.train import train as run_training
    from stave.generator.train_config import TrainConfig

    check_device(device.value)
    current = settings()
    source = autoencoder_source_path(autoencoder_from)
    folder = out or current.data_dir / "models"
    cfg = TrainConfig(
        corpus_clips=clips,
        ae_steps=ae_steps,
        embedding_steps=embedding_steps,
        denoiser_steps=denoiser_steps,
        corpus_seed=seed,
        seed=seed,
    )
    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[loss]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        tasks: dict[str, object] = {}

        def progress(phase: str, step: int, total: int, losses: dict[str, float]) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total, loss="")
            shown = " ".join(f"{k}={v:.3f}" for k, v in losses.items())
            bar.update(tasks[phase], completed=step, loss=shown)  # type: ignore[arg-type]

        checkpoint = run_training(
            folder, cfg, device=device.value, progress=progress, autoencoder_from=source
        )
    if as_json:
        print_json(
            {"checkpoint": str(checkpoint), "model_card": str(checkpoint.with_suffix(".json"))}
        )
        return
    typer.echo(f"checkpoint {checkpoint}")
    typer.echo(f"model card {checkpoint.with_suffix('.json')}")


def evaluate(
    quick: bool = typer.Option(
        False, "--quick", help="A small sample (under two minutes on a CPU)."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    checkpoint: Path | None = typer.Option(
        None, help="Checkpoint (default: STAVE_CHECKPOINT or the shipped one)."
    ),
    device: Device = typer.Option(Device.auto, help="Where to generate."),
    record: bool = typer.Option(False, "--record", help="Write the figures into the model card."),
) -> None:
    """Generate for held-out prompts and report key, tempo, sounds-alike precision and RTF."""
    from stave.generator.checkpoint import PACKAGED, model_card_path  # torch
    from stave.generator.evaluate import evaluate as run_evaluation
    from stave.generator.pipeline import StaveGenerator
    from stave.generator.train import write_json

    check_device(device.value)
    current = settings()
    if checkpoint is not None and not checkpoint.is_file():
        raise InvalidInput(f"--checkpoint {checkpoint}: no such file")
    generator = StaveGenerator.load(checkpoint or current.checkpoint, device=device.value)
    report = run_evaluation(
        generator, quick=quick, progress=None if as_json else lambda msg: typer.echo(msg, err=True)
    )
    if record:
        card_path = model_card_path(Path(checkpoint or current.checkpoint or PACKAGED))
        card = json.loads(card_path.read_text())
        card["evaluation"] = report
        write_json(card_path, card)
    if as_json:
        print_json(report)
        return
    for key, value in report.items():
        typer.echo(f"{key:<30} {value}")


models_app = typer.Typer(help="Trained checkpoints in the object store: list them, fetch one.")


@models_app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """The checkpoints the training flow put under `<env>/models/`, with their encoder version
    and final losses."""
    from stave.infra.objectstore import make_object_store
    from stave.tasks.checkpoints import stored_models

    current = settings()
    models = [m.summary() for m in stored_models(make_object_store(current), current.env)]
    if as_json:
        print_json(models)
        return
    if not models:
        typer.echo(f"no checkpoints under {current.env}/models/ (`stave run train/train`)")
    for model in models:
        typer.echo(
            f"{model['sha256'][:16]}  {model['bytes'] / 1e6:6.1f} MB  "
            f"encoder {model['encoder_version']}  {model['checkpoint_key']}"
        )


@models_app.command("fetch")
def models_fetch(
    sha256: str = typer.Argument(..., help="The checkpoint's sha256, or its first characters."),
    out: Path = typer.Option(..., "--out", help="Folder to put the checkpoint and its card in."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Fetch a trained checkpoint and its model card onto this host (checked by sha256 before
    it is put in place); point STAVE_CHECKPOINT at the path printed."""
    from stave.infra.objectstore import make_object_store
    from stave.tasks.checkpoints import fetch_model

    current = settings()
    path = fetch_model(make_object_store(current), current.env, sha256, out.expanduser())
    if as_json:
        print_json({"checkpoint": str(path), "model_card": str(path.with_suffix(".json"))})
        return
    typer.echo(f"{path} (and its card); set STAVE_CHECKPOINT={path}")

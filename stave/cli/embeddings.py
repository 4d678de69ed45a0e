"""`stave backfill`, `stave embeddings status`, `stave similar`, `stave index rebuild|list`."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from tqdm import tqdm

from stave.cli.common import (
    JSON_HELP,
    PollingBar,
    engine,
    flow_summary,
    in_process_prefect,
    print_json,
    raise_if_clips_failed,
    reader,
    settings,
)
from stave.infra import stop
from stave.infra.errors import InvalidInput
from stave.infra.objectstore import make_object_store
from stave.models.base import parse_id
from stave.tasks import backfill as plan
from stave.tasks import gallery as pages
from stave.tasks import search, vector_index
from stave.tasks.backfill import coverage, latest_progress
from stave.tasks.encoders import load_encoder
from stave.tasks.inference import check_device, current_encoder_version

DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]

embeddings_app = typer.Typer(help="Latent embeddings: coverage per encoder version.")
index_app = typer.Typer(help="HNSW indexes for sounds-alike search.", no_args_is_help=True)


def _run_bar(scope: Any) -> PollingBar:
    """A progress bar over the backfill run's record, while the flow works in this process."""

    def poll() -> tuple[int, int, dict[str, Any]] | None:
        run = latest_progress(engine(settings()), scope)
        if run is None:
            return None
        done = run["written"] + run["failed"]
        return run["planned"], done, {"written": run["written"], "failed": run["failed"]}

    return PollingBar(poll, desc="backfill", unit="clip")


def backfill(
    encoder_version: str | None = typer.Option(
        None, "--encoder-version", "--encoder", help="Encoder version (default: current)."
    ),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="A checkpoint whose encoder to use (a version not configured)."
    ),
    created_after: datetime | None = typer.Option(
        None, "--created-after", formats=DATE_FORMATS, help="Only clips created at/after (UTC)."
    ),
    created_before: datetime | None = typer.Option(
        None, "--created-before", formats=DATE_FORMATS, help="Only clips created before (UTC)."
    ),
    model_version: str | None = typer.Option(
        None,
        "--model-version",
        help="Only clips of this model version (id, version, name:version).",
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, max=10_000),
    limit: int | None = typer.Option(None, "--limit", min=0, help="Stop after N clips."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count and estimate; write nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Compute embeddings for clips that lack them for an encoder version (resumable)."""
    current = settings()
    check_device(current.device)
    if not dry_run:
        make_object_store(current).check()
    db = engine(current)
    # Resolved here too, so a bad option fails in one line before Prefect starts.
    encoder = load_encoder(db, current, encoder_version, str(checkpoint) if checkpoint else None)
    scope = plan.resolve_scope(db, encoder.version, created_after, created_before, model_version)
    in_process_prefect(current)
    from stave.flows.backfill import backfill_embeddings  # prefect

    params: dict[str, Any] = {
        "encoder_version": encoder.version,
        "created_after": created_after,
        "created_before": created_before,
        "model_version": model_version,
        "batch_size": batch_size,
        "limit": limit,
        "dry_run": dry_run,
        "checkpoint": str(checkpoint) if checkpoint else None,
    }
    if dry_run:
        summary = flow_summary(backfill_embeddings(**params, return_state=True))
    else:
        with _run_bar(scope):
            summary = flow_summary(backfill_embeddings(**params, return_state=True))
    if as_json:
        print_json(summary)
    elif dry_run:
        typer.echo(
            f"dry run: {summary['assets']} clip(s) lack {encoder.version} "
            f"({summary['batches']} batch(es)); about {summary['estimated_seconds']:.0f} s "
            f"from a sample of {summary['sampled']}; nothing written"
        )
    else:
        _print_backfill(summary, encoder.version)
    stop.check()  # a signal cut the run short: exit 130 / 143 after the summary
    raise_if_clips_failed(summary, "stave embeddings status --json")


def _print_backfill(summary: dict[str, Any], version: str) -> None:
    typer.echo(
        f"backfill {summary['run_id']} ({version}): {summary['status']}"
        f"{' (resumed)' if summary['resumed'] else ''}"
    )
    for name in ("written", "failed", "batches", "written_total", "failed_total"):
        typer.echo(f"  {name:<14}{summary[name]}")
    typer.echo(f"  index         {summary['index'] or '-'}")
    if summary["status"] == "stopped":
        why = "a signal stopped it" if stop.requested() else "the limit was reached"
        typer.echo(f"  {why}: run the same command again to continue")


@embeddings_app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Coverage per encoder version, its index, and the latest backfill runs."""
    current = settings()
    report = coverage(engine(current), current_encoder_version(current))
    if as_json:
        print_json(report)
        return
    typer.echo(f"assets: {report['assets']}")
    typer.echo(f"{'encoder version':<34}{'embeddings':>11}{'coverage':>10}  index")
    for v in report["versions"]:
        mark = " (current)" if v["current"] else ""
        cov = f"{100 * v['coverage']:.1f}%" if v["coverage"] is not None else "-"
        index = v["index"]
        shown = f"m={index['m']} ef_c={index['ef_construction']}" if index else "none (exact)"
        typer.echo(f"{v['encoder_version'] + mark:<34}{v['embeddings']:>11}{cov:>10}  {shown}")
    if report["runs"]:
        typer.echo("recent backfills:")
        for r in report["runs"]:
            typer.echo(
                f"  {r['id']}  {r['encoder_version']:<24} {r['status']:<10} "
                f"{r['written']}/{r['planned']} written, {r['failed']} failed"
            )
            for failure in r["failures"][:5]:
                typer.echo(f"      {failure['asset_id']}: {failure['reason']}")


def similar(
    asset_id: str | None = typer.Argument(None, help="The asset to find neighbours of."),
    file: Path | None = typer.Option(None, "--file", help="An audio file to embed and search."),
    k: int = typer.Option(10, "-k", min=1, max=1000, help="How many neighbours."),
    model_version: str | None = typer.Option(None, "--model-version", help="Only this model."),
    encoder: str | None = typer.Option(None, "--encoder", help="Encoder version (current)."),
    user: str | None = typer.Option(None, "--user", help="Only this user's clips."),
    exact: bool = typer.Option(False, "--exact", help="Exact scan instead of the index."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Clips that sound like an asset (or an audio file), by cosine distance."""
    current = settings()
    if (asset_id is None) == (file is None):
        raise InvalidInput("give an asset id or --file, not both")
    db = reader(current)  # the replica when one is configured and fit
    options: dict[str, Any] = {
        "k": k,
        "encoder_version": encoder,
        "model_version": model_version,
        "user_id": user,
        "exact": exact,
    }
    if file is not None:
        vector = search.embed_file(db, current, file, encoder)
        result = search.similar(db, current, vector=vector, **options)
    else:
        asset = parse_id(asset_id or "", "asset")
        result = search.similar(db, current, asset_id=asset, **options)
    if as_json:
        print_json(result.to_dict())
        return
    typer.echo(
        f"{len(result.neighbours)} neighbour(s) by {result.method} search "
        f"({result.encoder_version})"
    )
    for rank, n in enumerate(result.neighbours, 1):
        prompt = (n.prompt or "-").replace("\n", " ")
        typer.echo(f"{rank:>3}  {n.distance:.4f}  {n.asset_id}  {prompt[:60]}")


@index_app.command("rebuild")
def rebuild(
    encoder: str | None = typer.Option(None, "--encoder", help="Encoder version (current)."),
    all_versions: bool = typer.Option(False, "--all", help="Every version with embeddings."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """(Re)build HNSW indexes concurrently with the configured m and ef_construction."""
    current = settings()
    db = engine(current)
    if all_versions:
        versions = [v["encoder_version"] for v in coverage(db)["versions"] if v["embeddings"]]
    else:
        versions = [encoder or current_encoder_version(current)]
    built = []
    for version in versions:
        index = vector_index.rebuild(db, version, current)
        built.append(index.to_dict())
        if not as_json:
            typer.echo(
                f"{index.name}: m={index.m} ef_construction={index.ef_construction} "
                f"({index.bytes / 2**20:.1f} MiB) for {version}"
            )
    if as_json:
        print_json(built)


@index_app.command("list")
def list_indexes(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """The HNSW indexes, one per encoder version."""
    with engine(settings()).connect() as conn:
        found = [i.to_dict() for i in vector_index.list_indexes(conn)]
    if as_json:
        print_json(found)
        return
    if not found:
        typer.echo("no vector indexes (searches scan exactly)")
    for i in found:
        state = "" if i["valid"] else "  INVALID (stave index rebuild)"
        typer.echo(
            f"{i['name']}  {i['encoder_version']}  m={i['m']} "
            f"ef_construction={i['ef_construction']}  {i['bytes'] / 2**20:.1f} MiB{state}"
        )


def gallery(
    job_id: str | None = typer.Argument(None, help="A job whose published clips to show."),
    similar_to: str | None = typer.Option(
        None, "--similar", help="Show this asset and the clips that sound like it instead."
    ),
    out: Path = typer.Option(..., "-o", "--out", help="Directory to write the gallery into."),
    neighbours: int = typer.Option(5, "--neighbours", min=0, max=50, help="Per clip."),
    k: int = typer.Option(12, "-k", min=1, max=200, help="Clips for --similar."),
    limit: int = typer.Option(200, "--limit", min=1, max=500, help="Most clips from a job."),
    encoder: str | None = typer.Option(None, "--encoder", help="Encoder version (current)."),
    user: str | None = typer.Option(None, "--user", help="Neighbours among this user's clips."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Write a static HTML listening page (players, spectrograms, neighbours); no server."""
    current = settings()
    if (job_id is None) == (similar_to is None):
        raise InvalidInput("give a job id or --similar ASSET_ID, not both")
    db = reader(current)  # the replica when one is configured and fit
    if job_id is not None:
        clips = pages.select_job(db, parse_id(job_id, "job"), limit)
        title = f"Job {job_id}"
    else:
        asset = parse_id(similar_to or "", "asset")
        clips = pages.select_similar(db, current, asset, k, encoder, user)
        title = f"Sounds like {asset}"
    with tqdm(total=len(clips), unit="clip", desc="gallery", leave=False) as bar:
        made = pages.build(
            db,
            make_object_store(current),
            current,
            out,
            clips,
            title,
            neighbours=neighbours,
            encoder=encoder,
            user_id=user,
            progress=bar.update,
        )
    if as_json:
        print_json(made.to_dict())
        return
    typer.echo(f"{made.path} ({made.clips} clip(s), {made.audio_files} audio file(s))")
    for problem in made.problems:
        typer.echo(f"  problem: {problem}", err=True)

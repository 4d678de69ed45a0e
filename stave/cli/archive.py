"""`stave archive run | list | restore | query`."""

from __future__ import annotations

import re

import typer
from tqdm import tqdm

from stave.cli.common import JSON_HELP, engine, print_json, settings
from stave.infra.errors import InvalidInput
from stave.infra.objectstore import make_object_store
from stave.tasks import archive

app = typer.Typer(
    help="Archival: old rows to Parquet in the object store; list, restore, query in place.",
    no_args_is_help=True,
)


def _days(value: str | None) -> int | None:
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*d?\s*", value)
    if not match:
        raise InvalidInput(f"--older-than {value!r}: give days, like 183d")
    return int(match.group(1))


@app.command()
def run(
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would move; write nothing."),
    older_than: str | None = typer.Option(
        None, "--older-than", help="Override every table's hot period, e.g. 183d."
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Move rows past their hot period (183 days for generation records) to Parquet."""
    current = settings()
    db = engine(current)
    days = _days(older_than)
    plans = archive.plan(db, days)
    total = sum(p.rows for p in plans)
    if dry_run or total == 0:
        if as_json:
            print_json({"dry_run": dry_run, "rows": total, "plan": [p.to_dict() for p in plans]})
        elif total == 0:
            cutoffs = ", ".join(f"{p.table} before {p.cutoff:%Y-%m-%d}" for p in plans)
            typer.echo(f"nothing old enough to archive ({cutoffs}); nothing written")
        else:
            for p in plans:
                typer.echo(f"{p.table:<18} {p.rows:>9} row(s) created before {p.cutoff:%Y-%m-%d}")
            typer.echo("dry run: nothing written")
        return
    store = make_object_store(current)
    store.check()  # before any group is prepared
    with tqdm(total=total, unit="row", desc="archiving", leave=False) as bar:
        result = archive.run_archive(
            db,
            store,
            current.tmp_dir / "archive",
            older_than_days=days,
            batch_size=batch_size or current.archive_batch_size,
            progress=bar.update,
            env_name=current.env,
        )
    if as_json:
        print_json(result.to_dict())
        return
    typer.echo(f"archived {result.groups} group(s):")
    for table, rows in sorted(result.rows.items()):
        typer.echo(f"  {table:<18}{rows:>9}")
    typer.echo(f"  audio objects moved to {current.env}/archive/audio/: {result.moved_objects}")
    if result.cleaned:
        typer.echo(f"  cleaned {result.cleaned} file(s) an interrupted run had left")


@app.command("list")
def list_(
    table: str | None = typer.Option(None, "--table", help="Only this table's files."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Archived Parquet files: table, rows, time range, whether restored."""
    batches = archive.list_batches(engine(settings()), table)
    if as_json:
        print_json(batches)
        return
    if not batches:
        typer.echo("nothing archived yet")
    for b in batches:
        restored = f"  restored {b['restored_at'][:10]}" if b["restored_at"] else ""
        typer.echo(
            f"{b['table_name']:<18}{b['row_count']:>8}  {b['time_from'][:10]}..{b['time_to'][:10]}"
            f"  {b['object_key']}{restored}"
        )


@app.command()
def restore(
    table: str = typer.Option(..., "--table", help="The archived table (e.g. generation_task)."),
    month: str = typer.Option(..., "--month", help="YYYY-MM"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Put a month of an archived table back (with what travelled with it); idempotent."""
    match = re.fullmatch(r"(\d{4})-(\d{2})", month.strip())
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise InvalidInput(f"--month {month!r}: use YYYY-MM")
    current = settings()
    added = archive.restore(
        engine(current),
        make_object_store(current),
        table,
        int(match.group(1)),
        int(match.group(2)),
        current.tmp_dir / "archive",
        env_name=current.env,
    )
    if as_json:
        print_json(added)
        return
    if not any(added.values()):
        typer.echo("already restored: nothing added")
        return
    for name, rows in added.items():
        typer.echo(f"  {name:<18}{rows:>9} row(s) restored")


@app.command()
def query(
    table: str = typer.Option(..., "--table", help="The archived table."),
    where: str | None = typer.Option(
        None, "--where", help="e.g. \"user_id = 'ana' and created_at < 2026-01-01\""
    ),
    columns: str | None = typer.Option(None, "--columns", help="Comma-separated columns."),
    limit: int = typer.Option(20, "--limit", min=1, help="Rows to print (JSON: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON rows."),
) -> None:
    """Read archived rows in place (pyarrow.dataset filters), without restoring."""
    current = settings()
    chosen = [c.strip() for c in columns.split(",")] if columns else None
    found = archive.query(
        engine(current),
        make_object_store(current),
        table,
        current.tmp_dir / "archive",
        where=where,
        columns=chosen,
    )
    rows = found.to_pylist()
    if as_json:
        print_json(rows)
        return
    typer.echo(f"{len(rows)} row(s)")
    for row in rows[:limit]:
        shown = {k: v for k, v in row.items() if k != "embedding"}
        typer.echo("  " + ", ".join(f"{k}={str(v)[:40]}" for k, v in shown.items()))

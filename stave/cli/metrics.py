"""`stave metrics serve | show`: Prometheus metrics from the database."""

from __future__ import annotations

import time

import typer
from prometheus_client import start_http_server

from stave.cli.common import engine, settings
from stave.infra import stop
from stave.tasks.metrics import exposition, registry_for

app = typer.Typer(help="Prometheus metrics: queue, clips, coverage, backups, archive lag.")


@app.command()
def serve(
    port: int = typer.Option(9464, "--port", min=1, max=65535, help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: all)."),
) -> None:
    """Serve the metrics at http://HOST:PORT/metrics until stopped (Ctrl-C, SIGTERM)."""
    server, thread = start_http_server(port, addr=host, registry=registry_for(engine(settings())))
    typer.echo(f"metrics at http://{host}:{port}/metrics", err=True)
    try:
        while not stop.requested():
            time.sleep(0.2)
    finally:
        server.shutdown()
        thread.join(timeout=5)


@app.command()
def show() -> None:
    """Print the metrics once, in Prometheus' text format."""
    typer.echo(exposition(engine(settings())), nl=False)

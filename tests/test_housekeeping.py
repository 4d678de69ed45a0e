"""Prefect housekeeping under Prefect's harness: old finished runs and their artifacts go,
recent ones stay."""

from __future__ import annotations

import uuid

import pytest
from prefect import flow
from prefect.artifacts import create_markdown_artifact

pytestmark = pytest.mark.integration


@flow(name="housekeeping-probe")
def probe(tag: str) -> str:
    create_markdown_artifact(markdown=f"probe {tag}", key=f"probe-{tag}")
    return tag


def test_finished_runs_older_than_the_retention_are_removed(prefect_api: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowFilter,
        FlowFilterName,
    )

    from stave.flows.housekeeping import prefect_housekeeping

    tag = uuid.uuid4().hex[:8]
    probe(tag)
    only_probes = FlowFilter(name=FlowFilterName(any_=["housekeeping-probe"]))
    mine = ArtifactFilter(key=ArtifactFilterKey(any_=[f"probe-{tag}"]))
    with get_client(sync_client=True) as client:
        assert client.read_flow_runs(flow_filter=only_probes)
        assert client.read_artifacts(artifact_filter=mine)

    kept = prefect_housekeeping(keep_days=1)  # every run of this session ended seconds ago
    assert kept["flow_runs"] == 0
    with get_client(sync_client=True) as client:
        assert client.read_flow_runs(flow_filter=only_probes)

    # keep_days=0 clears every finished run of the session's harness; tests that read their
    # own runs' artifacts do so within themselves, so none depends on what this removes.

    removed = prefect_housekeeping(keep_days=0)
    assert removed["flow_runs"] >= 1 and removed["artifacts"] >= 1
    with get_client(sync_client=True) as client:
        assert client.read_flow_runs(flow_filter=only_probes) == []
        assert client.read_artifacts(artifact_filter=mine) == []

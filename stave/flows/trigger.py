"""`stave run`: trigger a deployment with typed, validated parameters, and follow the run.

Parameters arrive as `key=value` text; each is typed by the deployment's own parameter schema
(JSON where the schema wants a number, boolean, list or object; the text itself where it wants
a string), then the whole set, with the deployment's defaults, is validated against that schema
before anything is sent, so a typo is one line naming the parameter and no run is created.
Following a run reads its state and its latest progress artifact (the flows publish one).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
)
from prefect.exceptions import ObjectNotFound
from prefect.utilities.schema_tools.validation import ValidationError, validate

from stave.infra.errors import InvalidInput, NotFound


@dataclass
class Triggered:
    flow_run_id: uuid.UUID
    flow_run_name: str
    deployment: str
    parameters: dict[str, Any]


@dataclass
class Followed:
    state: str
    message: str | None
    progress: float | None

    @property
    def completed(self) -> bool:
        return self.state == "Completed"


def typed_parameters(pairs: list[str], schema: dict[str, Any], deployment: str) -> dict[str, Any]:
    """`key=value` pairs as the values the deployment's schema describes."""
    properties: dict[str, Any] = schema.get("properties") or {}
    typed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"-p {pair!r}: write key=value")
        if key not in properties:
            known = ", ".join(sorted(properties)) or "none"
            raise InvalidInput(f"-p {key}: {deployment} has no parameter {key!r} (it has: {known})")
        typed[key] = _typed(raw, properties[key])
    return typed


def _typed(raw: str, prop: dict[str, Any]) -> Any:
    kinds = {prop.get("type")} | {branch.get("type") for branch in prop.get("anyOf", [])}
    kinds.discard(None)
    if kinds <= {"string"}:
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw  # the schema check below says what was expected


def trigger(name: str, pairs: list[str]) -> Triggered:
    """Create a flow run of deployment `name` ("flow/deployment") with checked parameters."""
    if "/" not in name:
        raise InvalidInput(
            f"{name!r}: name a deployment as flow/deployment (stave deploy lists them)"
        )
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise NotFound(f"no deployment {name!r} on the Prefect server: stave deploy") from None
        schema = deployment.parameter_openapi_schema or {}
        parameters = typed_parameters(pairs, schema, name)
        try:
            validate({**deployment.parameters, **parameters}, schema, raise_on_error=True)
        except ValidationError as err:
            raise InvalidInput(f"{name}: {err}") from None
        run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
    return Triggered(run.id, run.name, name, parameters)


def follow(
    flow_run_id: uuid.UUID,
    on_change: Callable[[Followed], None],
    *,
    poll_s: float = 1.0,
) -> Followed:
    """Poll the run until its state is final, telling `on_change` of each new state or
    progress; returns the final one."""
    seen: Followed | None = None
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            now = Followed(run.state_name or "Unknown", run.state.message if run.state else None,
                           _progress(client, flow_run_id))  # fmt: skip
            if now != seen:
                on_change(now)
                seen = now
            if run.state is not None and run.state.is_final():
                return now
            time.sleep(poll_s)


def _progress(client: Any, flow_run_id: uuid.UUID) -> float | None:
    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            type=ArtifactFilterType(any_=["progress"]),
        )
    )
    values = [a.data for a in artifacts if isinstance(a.data, int | float)]
    return float(max(values)) if values else None

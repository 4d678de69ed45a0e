"""Alerts through Prefect automations: failures reach a person, without anyone watching.

`stave deploy` applies these automations to the Prefect server (idempotent: updated in place
by name). Always, so that a run whose host died does not stay Running for ever:
- a run that stops sending heartbeats (its process killed, its host gone: workers send one
  every `HEARTBEAT_S`) is marked Crashed after `UNRESPONSIVE_AFTER_S` (Prefect's recipe for
  "zombie" runs; its tasks come back to the queue by their own leases). The clock also starts
  at the run's Running event, which the server itself emits: a run whose host died before its
  first heartbeat reached the server (the client sends events from a background thread,
  seconds after the start under load) would otherwise stay Running for ever.
With `STAVE_ALERT_WEBHOOK_URL` set (removed when it is unset):
- a run of any Stave deployment ends Failed or Crashed: the run, its deployment, its state,
  the failure message and a link to the run in the UI;
- proactive: the nightly backup has no Completed run within `STAVE_BACKUP_ALERT_AFTER_H`
  (26 h by default: a night missed, with two hours to spare).
Both post to a "Custom Webhook" block whose URL is a secret of the block (so Prefect keeps it
masked in its API and UI); the server's automation services send the messages, so an alert
needs no Stave process running.

Delivery is at least once: Prefect's server retries an action whose bookkeeping failed after
the POST went out (its actions consumer records success only after `succeed`), so a receiver
can see one alert twice. A
run's alert ends with "Alert id: <the id of the state event>", the same on every repeat, for
a relay (or a reader) to drop repeats by.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast
from uuid import UUID

from prefect.automations import AutomationCore
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState, SendNotification
from prefect.events.schemas.automations import EventTrigger, Posture

from stave.infra.prefect_env import HEARTBEAT_S, ui_url
from stave.infra.settings import Settings

BLOCK = "stave-alerts"
TAG = "stave"
RUN_FAILED = "stave: a deployment's run failed"
BACKUP_LATE = "stave: no nightly backup completed"
BACKUP_DEPLOYMENT = "backup/nightly-backup"
UNRESPONSIVE = "stave: mark unresponsive runs crashed"
UNRESPONSIVE_AFTER_S = 3 * HEARTBEAT_S  # three heartbeats missed

RUN_FAILED_SUBJECT = (
    "Stave: {{ flow.name }}/{{ deployment.name }} run {{ flow_run.name }} {{ flow_run.state.name }}"
)
RUN_FAILED_BODY = (
    "Deployment {{ flow.name }}/{{ deployment.name }}: run {{ flow_run.name }} ended "
    "{{ flow_run.state.name }}.\n"
    "Cause: {{ flow_run.state.message }}\n"
    "Run: {{ flow_run|ui_url }}\n"
    "Alert id: {{ event.id }}"
)


@dataclass
class AlertSetup:
    webhook: bool
    automations: dict[str, str] = field(default_factory=dict)  # name -> created | updated
    removed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"webhook": self.webhook, "automations": self.automations, "removed": self.removed}


def apply_alerts(settings: Settings, deployments: dict[str, UUID]) -> AlertSetup:
    """The automations for these deployments (`flow/name` -> id), as the settings say."""
    with get_client(sync_client=True) as client:
        ours = {a.name: a for a in client.read_automations() if TAG in a.tags}
        wanted = [_unresponsive(deployments)]
        if settings.alert_webhook_url is not None:
            block_id = _webhook_block(settings.alert_webhook_url.get_secret_value())
            wanted.append(_run_failed(block_id, deployments))
            if BACKUP_DEPLOYMENT in deployments:
                backup = deployments[BACKUP_DEPLOYMENT]
                link = f"{ui_url(settings)}/deployments/deployment/{backup}"
                wanted.append(_backup_late(block_id, backup, settings.backup_alert_after_h, link))
        setup = AlertSetup(webhook=settings.alert_webhook_url is not None)
        for automation in wanted:
            existing = ours.pop(automation.name, None)
            if existing is None:
                client.create_automation(automation)
                setup.automations[automation.name] = "created"
            else:
                client.update_automation(existing.id, automation)
                setup.automations[automation.name] = "updated"
        for stale in ours.values():
            client.delete_automation(stale.id)
            setup.removed.append(stale.name)
    return setup


def _webhook_block(url: str) -> UUID:
    """The notification block, saved (replaced) with the URL among its secrets."""
    block = CustomWebhookNotificationBlock(
        name=BLOCK,
        url="{{ webhook_url }}",
        json_data={"subject": "{{ subject }}", "body": "{{ body }}", "source": "stave"},
        secrets={"webhook_url": url},
    )
    return cast(UUID, block.save(BLOCK, overwrite=True))


def _deployment_resources(ids: list[UUID]) -> dict[str, Any]:
    return {
        "prefect.resource.role": "deployment",
        "prefect.resource.id": [f"prefect.deployment.{i}" for i in ids],
    }


def _unresponsive(deployments: dict[str, UUID]) -> AutomationCore:
    after = timedelta(seconds=UNRESPONSIVE_AFTER_S)
    return AutomationCore(
        name=UNRESPONSIVE,
        description=f"A run of a Stave deployment sent no heartbeat for {after.seconds} s.",
        tags=[TAG],
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=_deployment_resources(list(deployments.values())),
            after={"prefect.flow-run.heartbeat", "prefect.flow-run.Running"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=after,
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=(
                    f"no heartbeat for {after.seconds} s: its process or host died; "
                    "its clips return to the queue when their leases run out"
                ),
            )
        ],
    )


def _run_failed(block_id: UUID, deployments: dict[str, UUID]) -> AutomationCore:
    return AutomationCore(
        name=RUN_FAILED,
        description="A run of a Stave deployment ended Failed or Crashed.",
        tags=[TAG],
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=_deployment_resources(list(deployments.values())),
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            SendNotification(
                block_document_id=block_id, subject=RUN_FAILED_SUBJECT, body=RUN_FAILED_BODY
            )
        ],
    )


def _backup_late(block_id: UUID, deployment_id: UUID, hours: float, link: str) -> AutomationCore:
    within = timedelta(hours=hours)
    said = f"{hours:g} h"
    return AutomationCore(
        name=BACKUP_LATE,
        description=f"The nightly backup has not completed in {said}.",
        tags=[TAG],
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=_deployment_resources([deployment_id]),
            expect={"prefect.flow-run.Completed"},
            posture=Posture.Proactive,
            threshold=1,
            within=within,
        ),
        actions=[
            SendNotification(
                block_document_id=block_id,
                subject=f"Stave: no nightly backup completed in {said}",
                # No triggering event on a proactive firing: the link is made here.
                body=(
                    f"Deployment {BACKUP_DEPLOYMENT}: no run has completed in the last {said}. "
                    f"Check the cpu worker and the latest backup runs: {link}"
                ),
            )
        ],
    )

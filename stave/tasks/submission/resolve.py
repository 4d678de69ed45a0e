"""A checked row made into a task's values: defaults merged, its seed drawn, its key derived.

Defaults are merged per row (row > style template > user preferences > settings); each layer
is checked once per chunk, not once per row (a million-row file uses a handful of layers).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any

import numpy as np

from stave.infra.settings import Settings
from stave.models.generation import PromptRevision
from stave.tasks.intake import MAX_SEED, CheckedRow, check_parameters

GENERATION = ("duration_s", "steps", "guidance", "scheduler")
Problem = tuple[str, str]  # (field, reason)


def settings_defaults(settings: Settings) -> dict[str, Any]:
    return {
        "duration_s": settings.default_duration_s,
        "steps": settings.default_steps,
        "guidance": settings.default_guidance,
        "scheduler": settings.default_scheduler,
    }


class Resolver:
    """Merges one chunk's rows with the templates, preferences and parent revisions looked up
    for that chunk."""

    def __init__(
        self,
        settings: Settings,
        templates: dict[str, dict[str, Any]],
        preferences: dict[str, dict[str, Any]],
        parents: dict[uuid.UUID, PromptRevision],
        rows: int,
    ) -> None:
        self.defaults = settings_defaults(settings)
        self._seeds = iter(seeds(rows))
        self.templates, self.preferences, self.parents = templates, preferences, parents
        self._layers: dict[str, tuple[Problem | None, dict[str, Any]]] = {}
        self._bases: dict[tuple[str, str | None], tuple[Problem | None, dict[str, Any]]] = {}

    def resolve(self, row: CheckedRow, owner: str) -> tuple[Problem | None, dict[str, Any]]:
        """Merged parameters for a row, or the (field, reason) that stops it."""
        if row.style_template is not None and row.style_template not in self.templates:
            return ("style_template", f"no style template named {row.style_template!r}"), {}
        if row.parent_revision is not None:
            parent = self.parents.get(row.parent_revision)
            if parent is None:
                return ("parent_revision", f"no prompt revision {row.parent_revision}"), {}
            if parent.user_id != owner:
                return ("parent_revision", f"revision {row.parent_revision} is another user's"), {}
        problem, base = self._base(owner, row.style_template)
        if problem is not None:
            return problem, {}
        merged = dict(base)
        merged.update(row.parameters)
        merged["duration_s"] = float(merged["duration_s"])
        merged["steps"] = int(merged["steps"])
        merged["guidance"] = float(merged["guidance"])
        merged["scheduler"] = str(merged["scheduler"]).lower()
        # Drawn now, not at generation time: the task's record holds its seed from the start.
        if "seed" not in merged:
            merged["seed"] = next(self._seeds)
        merged["seed_given"] = "seed" in row.parameters
        if row.style_template:
            merged["style_template"] = row.style_template
        return None, merged

    def _base(self, owner: str, template: str | None) -> tuple[Problem | None, dict[str, Any]]:
        """The layers under a row (settings, its user's preferences, its style template)
        merged, once per (user, template) in a chunk."""
        key = (owner, template)
        found = self._bases.get(key)
        if found is None:
            merged: dict[str, Any] = {}
            found = None, merged
            for origin, layer in (
                ("settings", self.defaults),
                (f"user {owner}'s preferences", self.preferences.get(owner, {})),
                (f"style template {template!r}", self.templates.get(template or "", {})),
            ):
                problem, known = self._layer(origin, layer)
                if problem is not None:
                    found = problem, {}
                    break
                merged.update(known)
            self._bases[key] = found
        return found

    def _layer(self, origin: str, layer: dict[str, Any]) -> tuple[Problem | None, dict[str, Any]]:
        """A layer's generation parameters, checked by the row rules, once per origin."""
        found = self._layers.get(origin)
        if found is None:
            known = {k: v for k, v in layer.items() if k in GENERATION}
            problem = check_parameters(known)
            found = ((problem[0], f"{problem[1]} (from {origin})") if problem else None), known
            self._layers[origin] = found
        return found

    def revision(self, row: CheckedRow) -> PromptRevision | None:
        """The row's parent revision when its text is unchanged (no new revision needed)."""
        parent = self.parents.get(row.parent_revision) if row.parent_revision else None
        if parent is not None and parent.prompt == row.prompt and parent.lyrics == row.lyrics:
            return parent
        return None


def seeds(n: int) -> list[int]:
    """n uniform seeds in 0 .. MAX_SEED (2^63-1) from the OS's randomness, in one call."""
    drawn = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(1)
    assert MAX_SEED == 2**63 - 1  # what the shift gives
    return drawn.tolist()  # type: ignore[no-any-return]


def idempotency_key(row: CheckedRow, source_sha256: str) -> str:
    """The row's own key, or one derived from the source's sha256, the row number and its
    content."""
    if row.idempotency_key is not None:
        return row.idempotency_key
    digest = hashlib.sha256(
        f"{source_sha256}\0{row.row}\0{row.fingerprint}".encode("utf-8", "surrogatepass")
    ).hexdigest()
    return f"auto-{digest[:48]}"

"""Validation: a Great Expectations suite over each batch's clip metadata, before publishing.

One frame row per clip. A clip that fails any expectation is quarantined, with the failed
expectations (type, column, observed value) recorded; the others are published. Great
Expectations is imported lazily (3 s) and its context, suite and checkpoint are built once per
process. Each batch's result is written to `STAVE_HOME/<env>/log/validation_results` by the
finishing process that validated it (nothing is kept in memory); after a job, any process
renders the results no page shows yet as Data Docs under `STAVE_HOME/<env>/log/data_docs`.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stave.generator import SAMPLE_RATE
from stave.infra.settings import Settings
from stave.tasks.storage import StoredClip

SUITE = "clip_metadata"
_lock = threading.Lock()
_contexts: dict[tuple[Any, ...], _Validator] = {}


@dataclass
class Verdict:
    batch_id: str
    success: bool
    failures: dict[uuid.UUID, list[dict[str, Any]]]  # task id -> failed expectations
    statistics: dict[str, Any]
    failed_expectations: list[dict[str, Any]] = field(default_factory=list)

    def passed(self, task_id: uuid.UUID) -> bool:
        return task_id not in self.failures


def preload() -> None:
    """Import Great Expectations (about 3 s) before the first batch needs it (benchmarks do,
    so that a worker's one-time start is not timed as a stage's cost). Not done on a thread
    of the flow run: an import still running when a short run's process exits is a daemon
    thread at interpreter shutdown."""
    importlib.import_module("great_expectations")


def metadata_frame(stored: list[StoredClip]) -> Any:
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "task_id": str(c.task_id),
                "duration_s": c.duration_s,
                "duration_error_s": abs(c.duration_s - c.requested_duration_s),
                "sample_rate": c.sample_rate,
                "channels": c.channels,
                "loudness_lufs": c.loudness_lufs,
                "peak_dbfs": c.peak_dbfs,
                "nonfinite_samples": c.nonfinite_samples,
                "embedding_dims": int(c.embedding.shape[0]) if c.embedding.ndim == 1 else -1,
                "embedding_norm": float(np.linalg.norm(c.embedding)),
                "embedding_finite": bool(np.isfinite(c.embedding).all()),
                "sha256": c.sha256,
                "bytes": c.bytes,
                "model_version": c.provenance.get("model_version"),
                "checkpoint_sha256": c.provenance.get("checkpoint_sha256"),
            }
            for c in stored
        ]
    )


class _Validator:
    def __init__(self, settings: Settings, sample_rate: int) -> None:
        import great_expectations as gx

        # The expectation classes are re-exported lazily, which mypy cannot see.
        gxe: Any = importlib.import_module("great_expectations.expectations")
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        # In memory but for the results: those go to files that every process of this home
        # shares (batches are validated in several finishing processes, rendered in one).
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False)
        )
        config.stores[config.validation_results_store_name] = {
            "class_name": "ValidationResultsStore",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(settings.validation_results_dir),
            },
        }
        self.context = gx.get_context(project_config=config, mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.docs_dir = settings.data_docs_dir
        self.results_dir = settings.validation_results_dir
        self.context.add_data_docs_site(
            "local",
            {
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(self.docs_dir),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        batch = (
            self.context.data_sources.add_pandas("generated_clips")
            .add_dataframe_asset("clip_metadata")
            .add_batch_definition_whole_dataframe("batch")
        )
        suite = self.context.suites.add(gx.ExpectationSuite(name=SUITE))
        for expectation in (
            gxe.ExpectColumnValuesToBeUnique(column="task_id"),
            gxe.ExpectColumnValuesToBeBetween(
                column="duration_error_s", min_value=0, max_value=settings.duration_tolerance_s
            ),
            gxe.ExpectColumnValuesToBeInSet(column="sample_rate", value_set=[sample_rate]),
            gxe.ExpectColumnValuesToBeInSet(column="channels", value_set=[1]),
            gxe.ExpectColumnValuesToBeBetween(
                column="loudness_lufs", min_value=settings.min_loudness_lufs, max_value=0
            ),
            gxe.ExpectColumnValuesToBeBetween(
                column="peak_dbfs", min_value=-60, max_value=settings.max_peak_dbfs
            ),
            gxe.ExpectColumnValuesToBeBetween(column="nonfinite_samples", min_value=0, max_value=0),
            gxe.ExpectColumnValuesToBeInSet(column="embedding_dims", value_set=[512]),
            gxe.ExpectColumnValuesToBeBetween(
                column="embedding_norm", min_value=0.999, max_value=1.001
            ),
            gxe.ExpectColumnValuesToBeInSet(column="embedding_finite", value_set=[True]),
            gxe.ExpectColumnValuesToMatchRegex(column="sha256", regex=r"^[0-9a-f]{64}$"),
            gxe.ExpectColumnValuesToBeBetween(column="bytes", min_value=1),
            gxe.ExpectColumnValuesToNotBeNull(column="model_version"),
            gxe.ExpectColumnValuesToMatchRegex(column="checkpoint_sha256", regex=r"^[0-9a-f]{64}$"),
        ):
            suite.add_expectation(expectation)
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=SUITE, data=batch, suite=suite)
        )
        self.checkpoint = self.context.checkpoints.add(
            gx.Checkpoint(
                name=SUITE,
                validation_definitions=[definition],
                actions=[],
                result_format={"result_format": "COMPLETE"},
            )
        )

    def run(self, frame: Any, batch_id: str) -> Any:
        from great_expectations.core.run_identifier import RunIdentifier

        result = self.checkpoint.run(
            batch_parameters={"dataframe": frame}, run_id=RunIdentifier(run_name=batch_id)
        )
        return next(iter(result.run_results.values()))

    def build_docs(self, keep_days: int) -> DocsBuild:
        """Remove the results older than `keep_days` with their pages, render the stored
        results that have no page yet, then the index: a build costs what is new, not
        everything ever validated, and the folder holds `keep_days` of batches."""
        from great_expectations.data_context.types.resource_identifiers import (
            ExpectationSuiteIdentifier,
        )

        removed = self._prune(keep_days)
        fresh: list[Any] = [
            key
            for key in self.context.validation_results_store.list_keys()
            if not self._page(key).is_file()
        ]
        if not fresh and not removed and (self.docs_dir / "index.html").is_file():
            return DocsBuild(0, [])
        self.docs_dir.mkdir(parents=True, exist_ok=True)
        suite = ExpectationSuiteIdentifier(name=SUITE)
        self.context.build_data_docs(resource_identifiers=[suite, *fresh])
        return DocsBuild(len(fresh), removed)

    def _page(self, key: Any) -> Path:
        """Where the site builder writes a result's page (its store key, as a path)."""
        *folders, name = key.to_tuple()
        return self.docs_dir.joinpath("validations", *folders, f"{name}.html")

    def _prune(self, keep_days: int) -> list[str]:
        """Results last written more than `keep_days` ago, and their pages, removed; the
        pages' paths within the Data Docs folder (their copies in the store go too)."""
        results = self.results_dir
        if not results.is_dir():
            return []
        cutoff = time.time() - keep_days * 86400
        removed = []
        for path in results.rglob("*.json"):
            try:
                if path.stat().st_mtime >= cutoff:
                    continue
                path.unlink()
            except FileNotFoundError:  # another process pruned it first
                continue
            page = Path("validations") / path.relative_to(results).with_suffix(".html")
            (self.docs_dir / page).unlink(missing_ok=True)
            removed.append(page.as_posix())
        for root in (results, self.docs_dir / "validations"):
            _remove_empty_folders(root)
        if removed:  # for whichever process next puts the Data Docs in the store
            with open(removed_pages_file(self.docs_dir), "a", encoding="utf-8") as listing:
                listing.write("".join(f"{page}\n" for page in removed))
        return removed


def removed_pages_file(docs_dir: Path) -> Path:
    """Pages pruned from the Data Docs whose copies in the store are still to be deleted."""
    return docs_dir.parent / "data_docs.removed"


def _remove_empty_folders(root: Path) -> None:
    if not root.is_dir():
        return
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):  # not empty, or gone
            folder.rmdir()


def _validator(settings: Settings, sample_rate: int) -> _Validator:
    key = (
        str(settings.data_docs_dir),
        sample_rate,
        settings.duration_tolerance_s,
        settings.min_loudness_lufs,
        settings.max_peak_dbfs,
    )
    with _lock:
        if key not in _contexts:
            _contexts[key] = _Validator(settings, sample_rate)
        return _contexts[key]


def validate(
    stored: list[StoredClip], settings: Settings, *, batch_id: str, sample_rate: int
) -> Verdict:
    """Run the suite over the batch's metadata; which clips failed which expectations."""
    frame = metadata_frame(stored)
    result = _validator(settings, sample_rate).run(frame, batch_id)
    failures: dict[uuid.UUID, list[dict[str, Any]]] = {}
    failed: list[dict[str, Any]] = []
    for outcome in result.results:
        if outcome.success:
            continue
        config = outcome.expectation_config
        column = config.kwargs.get("column")
        rows = outcome.result.get("unexpected_index_list") or []
        summary = {
            "expectation": config.type,
            "column": column,
            "unexpected_count": outcome.result.get("unexpected_count"),
            "sample": _jsonable(outcome.result.get("partial_unexpected_list", [])[:5]),
        }
        failed.append(summary)
        for index in rows:
            position = int(index["index"]) if isinstance(index, dict) else int(index)
            value = frame.iloc[position][column] if column else None
            failures.setdefault(stored[position].task_id, []).append(
                {"expectation": config.type, "column": column, "observed": _jsonable(value)}
            )
    statistics = _jsonable(dict(result.statistics))
    statistics["clips"] = len(stored)
    statistics["quarantined"] = len(failures)
    return Verdict(batch_id, bool(result.success), failures, statistics, failed)


@dataclass(frozen=True)
class DocsBuild:
    rendered: int  # results rendered as pages
    removed: list[str]  # pages removed (older than STAVE_DATA_DOCS_KEEP_DAYS), by path


def build_data_docs(settings: Settings, sample_rate: int = SAMPLE_RATE) -> DocsBuild:
    """Render the validation results stored under this home that have no page yet, and the
    site's index, after removing those older than STAVE_DATA_DOCS_KEEP_DAYS. Any process can:
    the results are files."""
    if (
        not settings.validation_results_dir.is_dir()
        and (settings.data_docs_dir / "index.html").is_file()
    ):
        return DocsBuild(0, [])
    return _validator(settings, sample_rate).build_docs(settings.data_docs_keep_days)


def _jsonable(value: Any) -> Any:
    """Values fit for JSONB: non-finite floats become strings, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value

"""The meaning of every setting, grouped by concern (rendered by `stave.infra.settings_docs`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    fields: tuple[str, ...]
    meaning: str
    # What an unset (None) default means, e.g. "unset: the embedded database".
    unset: str = "unset"


def _e(fields: str, meaning: str, unset: str = "unset") -> Entry:
    return Entry(tuple(fields.split()), meaning, unset)


GROUPS: list[tuple[str, str, list[Entry]]] = [
    (
        "Environment and local state",
        "`STAVE_ENV` picks a profile whose values apply wherever nothing else was set.",
        [
            _e("env", "`dev`, `stage` or `prod`: the profile (the per-environment column)"),
            _e(
                "home",
                "root of local state; `<home>/<env>/data`, `/log` and `/tmp` are kept apart. "
                "A service must set it (the default is relative to the working directory)",
            ),
            _e("log_level", "level of `<home>/<env>/log/stave.log` (rotated at 20 MB, 5 kept)"),
            _e(
                "require_external_services",
                "refuse to start without `STAVE_DATABASE_URL`, `STAVE_S3_ENDPOINT` and real "
                "(non-placeholder) secrets for both; every host of a stage or prod fleet "
                "needs all four",
            ),
        ],
    ),
    (
        "Database",
        "With no `STAVE_DATABASE_URL`, Stave starts its own PostgreSQL 16 + pgvector under "
        "`<home>/<env>/data/pg` (dev only).",
        [
            _e(
                "database_url",
                "`postgresql://user:password@host:port/db` (a secret: printed masked); the "
                "privileges each login needs are in [production.md](production.md)",
                "unset: the embedded server",
            ),
            _e("database_name", "the database created in the embedded cluster"),
            _e(
                "embedded_pg_port",
                "loopback port of the embedded server; `0` picks a free one once and keeps it",
            ),
            _e("db_pool_size", "connections kept per process"),
            _e("db_max_overflow", "extra connections under load"),
            _e("db_pool_timeout_s", "wait for a pooled connection"),
            _e("db_connect_timeout_s", "TCP connect timeout"),
            _e(
                "replica_url",
                "a streaming replica (secret): `stave report`, `similar` and `gallery` read from "
                "it; writes always go to the primary. Down, not in recovery or lagging more than "
                "`STAVE_REPLICA_MAX_LAG_S`: reads go to the primary, with one warning in the log",
            ),
            _e("replica_max_lag_s", "replay lag beyond which reads leave the replica"),
        ],
    ),
    (
        "Object store",
        "With no `STAVE_S3_ENDPOINT`, objects are files under `<home>/<env>/data/objects` "
        "(dev only). Everything an environment writes is under `<env>/` in the bucket, so "
        "environments can share one.",
        [
            _e("s3_endpoint", "`host:port` of MinIO / S3", "unset: the filesystem store"),
            _e("s3_access_key s3_secret_key", "credentials (secrets; printed as `***`)"),
            _e("s3_secure", "HTTPS to the object store"),
            _e("s3_region", "region, if the server wants one"),
            _e("bucket", "the bucket (created if missing)"),
            _e("s3_part_size_mb", "multipart part size of streamed uploads"),
            _e(
                "s3_max_retries s3_retry_backoff_s",
                "retries with exponential backoff on connection errors and HTTP 5xx",
            ),
        ],
    ),
    (
        "Prefect: server, pools, schedules, alerts",
        "",
        [
            _e(
                "prefect_api_url",
                "a Prefect server's API; `stave doctor` checks it when set. Unset: `stave "
                "generate` and friends use an ephemeral API, and `stave pools`, `worker` and "
                "`deploy` the local `stave server`",
            ),
            _e(
                "prefect_api_auth_string",
                "`user:password` the server requires and every Stave client sends (secret)",
            ),
            _e(
                "prefect_database_url",
                "the Prefect server's PostgreSQL (secret); it needs the `pg_trgm` extension "
                "(the embedded pgserver lacks it, so `stave server` refuses one without it)",
                "unset: SQLite under `<home>/<env>/data/prefect`",
            ),
            _e("prefect_server_host prefect_server_port", "where `stave server` listens"),
            _e(
                "prefect_ui_url",
                "where operators open the Prefect UI; alert links point there",
                "unset: the server's own address",
            ),
            _e(
                "prefect_retention_days",
                "`stave server` has Prefect's vacuum service delete flow runs that ended longer "
                "ago than this, with their task runs, logs and artifacts, and old events",
            ),
            _e(
                "gpu_concurrency_limit",
                "the Prefect global concurrency limit inference holds one slot of (`stave pools "
                "setup --gpus N` sizes it: one slot per GPU in the fleet); a missing limit "
                "does not block",
            ),
            _e(
                "gpu_slot_lease_s",
                "the `gpu` slot's lease, renewed while a batch is made (60 s is the server's "
                "minimum): a slot whose holder is gone comes back after this",
            ),
            _e(
                "timezone",
                "IANA timezone of the schedules `stave deploy` applies: backup 02:00, archive "
                "Sunday 03:00",
            ),
            _e(
                "alert_webhook_url",
                "where alerts are posted (a secret; `stave deploy` keeps it in a Prefect "
                '"Custom Webhook" block). Unset: `stave deploy` removes Stave\'s alert '
                "automations",
            ),
            _e(
                "backup_alert_after_h",
                "alert when no nightly backup has completed for this many hours",
            ),
        ],
    ),
    (
        "Generator",
        "",
        [
            _e(
                "generator",
                "`builtin` (Stave's own model) or `acestep` (the real ACE-Step, extra "
                "`stave[acestep]`)",
            ),
            _e(
                "checkpoint",
                "checkpoint of the built-in model; its sha256 is checked against the model card "
                "beside it",
                "unset: the shipped `stave/generator/checkpoints/stave-small.pt`",
            ),
            _e(
                "acestep_checkpoint_dir", "local ACE-Step checkpoint folder (nothing is downloaded)"
            ),
            _e(
                "device",
                "`auto` (CUDA in bf16 when present, else the CPU in float32), `cpu`, `cuda`, "
                "`cuda:N`",
            ),
            _e(
                "batch_size",
                "clips per claimed batch and the generator's largest batch; `0` sizes it to the "
                "device (8 on the CPU, from free memory on CUDA up to 512)",
            ),
        ],
    ),
    (
        "Generation defaults",
        "A row's own value wins, then its style template, then the user's preferences, then these.",
        [
            _e("default_user", "user of rows with no `user_id`"),
            _e("default_duration_s", "clip length in seconds"),
            _e("default_steps", "denoising steps"),
            _e("default_guidance", "classifier-free guidance scale"),
            _e("default_scheduler", "`euler` or `heun`"),
        ],
    ),
    (
        "The queue",
        "How the fleet shares the queue: [operations.md](operations.md).",
        [
            _e("max_attempts", "attempts per task before it fails for good"),
            _e(
                "lease_s",
                "a claimed task's lease: a worker that dies loses its tasks to others after this",
            ),
            _e("retry_backoff_s", "first retry delay of retryable failures, doubled per attempt"),
            _e(
                "follow_poll_s",
                "how often an idle `stave run-pending --follow` asks whether work is due",
            ),
            _e(
                "queue_aging_s",
                "a job's work not claimed from for this long is claimed as the next class up "
                "(`0`: no aging)",
            ),
            _e(
                "fair_share_half_life_s",
                "a user's (and a job's) recent service in the fair share halves every this many "
                "seconds",
            ),
            _e(
                "user_max_running job_max_running",
                "the most tasks one user, or one job, may have running at once (`0`: no quota)",
            ),
        ],
    ),
    (
        "Finishing: encode, put, validate, publish",
        "Finishing runs in processes beside the model's, so the process that drives the GPU "
        "does only the model's work.",
        [
            _e("finishers", "finishing processes; `0`: one per core but the model's, at most 8"),
            _e(
                "finish_in_flight",
                "batches handed to the finishers and not yet published, at most (`0`: finishers "
                "+ 1); each holds its clips' 16-bit samples in shared memory until published: 2 "
                "bytes a sample, 82 MB for 256 ten-second clips",
            ),
            _e("finisher_nice", "the finishing processes' CPU priority below the model's (0-19)"),
        ],
    ),
    (
        "Publishing checks and pages",
        "",
        [
            _e(
                "duration_tolerance_s",
                "how far a clip's length may be from the one asked for",
            ),
            _e(
                "min_loudness_lufs",
                "quietest integrated loudness published (ITU-R BS.1770-4: K-weighted, gated)",
            ),
            _e("max_peak_dbfs", "loudest sample peak published"),
            _e(
                "quarantine_fails_run_above",
                "share of a run's clips that may be quarantined before the run ends Failed (and "
                "the CLI exits 3); `0`: any quarantined clip fails it. A failed clip always does",
            ),
            _e(
                "publish_pages",
                "put each job's listening page and the Data Docs in the store and link them "
                "from the run",
            ),
            _e("gallery_max_clips", "clips on a job's listening page"),
            _e(
                "gallery_keep_days",
                "a job's listening page (`<env>/gallery/<job>/`) is removed after this many "
                "days: by the bucket's rule (`stave store setup`) on S3, by `stave gc --delete` "
                "on either store",
            ),
            _e(
                "data_docs_keep_days",
                "a batch's validation result and its Data Docs page are removed after this many "
                "days (in the home when the Data Docs are next built, in the store when next put)",
            ),
            _e("link_expiry_h", "how long presigned page links last (S3 allows 7 days at most)"),
        ],
    ),
    (
        "Hot configuration cache",
        "Style templates and user preferences are read through a cache.",
        [
            _e(
                "redis_url",
                "`redis://[:password@]host:port/db` (secret). Down: reads go to the database, "
                "with one warning a minute",
                "unset: an in-process LRU",
            ),
            _e(
                "cache_ttl_s",
                "how long a cached entry lives; `stave templates set` / `stave prefs set` "
                "replace it at once (an in-process LRU sees other processes' updates when the "
                "entry expires)",
            ),
        ],
    ),
    (
        "Backups and the bucket's rules",
        "",
        [
            _e(
                "backup_keep_daily backup_keep_weekly backup_keep_monthly",
                "dumps kept: the newest per day / ISO week / month (by the nightly flow; the "
                "newest verified dump is always kept)",
            ),
            _e(
                "base_keep_daily base_keep_weekly",
                "base backups kept: the newest per day / ISO week (the newest verified always); "
                "WAL before the oldest kept one is deleted",
            ),
            _e(
                "wal_archive_timeout_s",
                "a server with new WAL closes its segment at least this often: the archive is "
                "never more than about this far behind (the RPO)",
            ),
            _e(
                "prompts_expire_days",
                "`stave store setup`: uploaded prompt files expire after this many days",
            ),
            _e(
                "backup_versions_keep_days",
                "`stave store setup`: a deleted or overwritten object under `<env>/backups/` "
                "stays recoverable (a noncurrent version) this long",
            ),
        ],
    ),
    (
        "Archival",
        "",
        [
            _e(
                "archive_batch_size",
                "root rows per archived group: one set of Parquet files, one deleting "
                "transaction (rows stream; about 0.5 KB of memory per asset moved)",
            ),
        ],
    ),
    (
        "Embeddings and sounds-alike search",
        "",
        [
            _e(
                "hnsw_m hnsw_ef_construction",
                "HNSW parameters used when an index is (re)built (`stave index rebuild`)",
            ),
            _e(
                "hnsw_ef_search",
                "candidates per index search; raised automatically for filtered searches (up to "
                "1000)",
            ),
            _e(
                "hnsw_build_memory_mb",
                "`maintenance_work_mem` of index builds (a 512-d graph takes about 2.6 KB a "
                "vector)",
            ),
            _e(
                "backfill_batch_size",
                "clips per backfill batch: one transaction, one bulk write, one checkpoint",
            ),
            _e(
                "backfill_window",
                "clips read and encoded at a time within a batch (bounds the audio held in memory)",
            ),
            _e("backfill_fetch_threads", "parallel object-store reads of a backfill"),
        ],
    ),
]

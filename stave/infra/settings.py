"""Stave's settings: one pydantic-settings class, one profile per environment.

`STAVE_ENV` picks a profile (dev / stage / prod) whose values fill in whatever the environment
and `.env` did not set; every field can be overridden with `STAVE_<FIELD>`. With no database URL
and no object-store endpoint, Stave runs on its embedded default under `STAVE_HOME/<env>/`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stave.infra.errors import ConfigError
from stave.infra.profiles import PLACEHOLDER_SECRETS, PROFILES

Env = Literal["dev", "stage", "prod"]


def normalise_pg_url(url: str) -> str:
    """Point plain `postgres(ql)://` URLs at the psycopg 3 driver SQLAlchemy should use."""
    for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def mask_url(url: str) -> str:
    """The URL with its password replaced, safe to print or log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}:***@{netloc[1]}"))


class Settings(BaseSettings):
    """Every setting Stave reads; `stave env` prints them with secrets masked."""

    model_config = SettingsConfigDict(
        env_prefix="STAVE_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    env: Env = "dev"
    home: Path = Path(".stave")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # stage/prod: an external PostgreSQL and object store are mandatory, with real secrets.
    require_external_services: bool = False

    # PostgreSQL. Unset: the embedded pgserver cluster under <home>/<env>/data/pg.
    database_url: SecretStr | None = None
    database_name: str = Field(default="stave", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    db_pool_size: int = Field(default=5, ge=1, le=200)
    db_max_overflow: int = Field(default=5, ge=0, le=200)
    db_pool_timeout_s: float = Field(default=30.0, gt=0)
    db_connect_timeout_s: int = Field(default=5, ge=1, le=300)
    # 0: pick a free loopback port the first time and keep it.
    embedded_pg_port: int = Field(default=0, ge=0, le=65535)
    # A streaming replica for reports, search and gallery reads (writes always go to the
    # primary). Reads fall back to the primary, with a warning, when the replica is down or
    # replays more than replica_max_lag_s behind.
    replica_url: SecretStr | None = None
    replica_max_lag_s: float = Field(default=30.0, ge=0)

    # Object store. Unset endpoint: a filesystem store under <home>/<env>/data/objects.
    s3_endpoint: str | None = None
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_secure: bool = False
    s3_region: str | None = None
    bucket: str = Field(default="stave", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    s3_part_size_mb: int = Field(default=16, ge=5, le=5120)
    s3_max_retries: int = Field(default=4, ge=0, le=20)
    s3_retry_backoff_s: float = Field(default=0.5, ge=0)

    # Generator: the built-in model (its shipped checkpoint unless one is named) or ACE-Step.
    generator: Literal["builtin", "acestep"] = "builtin"
    checkpoint: Path | None = None
    # auto: CUDA (bf16) when present, else the CPU (float32).
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    acestep_checkpoint_dir: Path | None = None

    # Hot configuration (style templates, user preferences) is read through a cache: Redis
    # when set (redis://[:password@]host:port/db), else an in-process LRU. Entries expire after
    # cache_ttl_s; updates replace them at once.
    redis_url: SecretStr | None = None
    cache_ttl_s: float = Field(default=60.0, gt=0, le=86400)

    # Generation defaults. A row's own value wins, then its style template, then the user's
    # preferences, then these.
    default_user: str = Field(default="default", pattern=r"^[A-Za-z0-9_.@-]{1,128}$")
    default_duration_s: float = Field(default=10.0, ge=1, le=600)
    default_steps: int = Field(default=16, ge=1, le=200)
    default_guidance: float = Field(default=3.0, ge=0, le=30)
    default_scheduler: Literal["euler", "heun"] = "euler"

    # The generation queue: leases, retries with backoff, batch sizes.
    max_attempts: int = Field(default=3, ge=1, le=20)
    lease_s: float = Field(default=600.0, gt=0)
    # The `gpu` slot's lease, renewed at three quarters of it while a batch is made. Short:
    # a slot whose holder is gone (a dead host, or an acquisition the server granted after
    # the client had given up on it and asked again) blocks the fleet only this long.
    gpu_slot_lease_s: float = Field(default=60.0, ge=60.0, le=3600.0)
    retry_backoff_s: float = Field(default=5.0, ge=0)
    # 0: as many clips per batch as the device takes (8 on the CPU, from free memory on CUDA,
    # up to 512); set, it is both the claim's size and the generator's largest batch.
    batch_size: int = Field(default=0, ge=0, le=1024)
    # `stave run-pending --follow`: how often an idle warm drain asks whether work is due.
    follow_poll_s: float = Field(default=0.5, gt=0, le=60)
    # A run (generate, drain) ends Failed, and the CLI exits 3, when any of its clips failed, or
    # when more than this share of them was quarantined (0: any quarantined clip).
    quarantine_fails_run_above: float = Field(default=0.0, ge=0.0, le=1.0)
    # Sharing the queue (ARCHITECTURE.md, "The queue"): a stream of work not claimed from for
    # this long is claimed as the next class up; users' recent service halves every
    # half-life; the most tasks one user, or one job, may have running (0: no quota).
    queue_aging_s: float = Field(default=3600.0, ge=0)
    fair_share_half_life_s: float = Field(default=3600.0, gt=0)
    user_max_running: int = Field(default=0, ge=0)
    job_max_running: int = Field(default=0, ge=0)
    # The Prefect global concurrency limit inference holds one slot of (one slot per GPU).
    gpu_concurrency_limit: str = "gpu"
    # Finishing (encode, put, validate, publish) runs in processes beside the model's: this
    # many (0: one per core but the model's, at most 8), at a lower CPU priority (nice).
    finishers: int = Field(default=0, ge=0, le=64)
    # Batches handed to finishers and not yet published, at most (0: finishers + 1); each
    # holds its clips' 16-bit samples in shared memory (2 bytes a sample: 82 MB for 256
    # ten-second clips) until it is published.
    finish_in_flight: int = Field(default=0, ge=0, le=64)
    finisher_nice: int = Field(default=10, ge=0, le=19)

    # Pages where people look: at the end of a job its listening page (the first clips, with
    # their neighbours) and the Data Docs go to the object store, linked from the run's
    # artifacts; S3 links are presigned for this long (SigV4 allows at most 7 days).
    publish_pages: bool = True
    gallery_max_clips: int = Field(default=200, ge=1, le=500)
    link_expiry_h: int = Field(default=168, ge=1, le=168)
    # How long pages stay: a job's listening page (`<env>/gallery/`, by the bucket's rule from
    # `stave store setup`, or `stave gc` on a filesystem store) and each batch's validation
    # result with its Data Docs page (in the home when the Data Docs are built, and in the
    # store with them).
    gallery_keep_days: int = Field(default=30, ge=1, le=3650)
    data_docs_keep_days: int = Field(default=30, ge=1, le=3650)

    # Publishing checks on every clip (the Great Expectations suite).
    duration_tolerance_s: float = Field(default=0.05, ge=0)
    min_loudness_lufs: float = -60.0
    max_peak_dbfs: float = 0.0

    # Retention: the newest dump of each of the last N days, weeks, months; the newest base
    # backup of each of the last N days, weeks (and the WAL they need); the newest verified
    # backup of each kind is always kept.
    backup_keep_daily: int = Field(default=7, ge=1, le=365)
    backup_keep_weekly: int = Field(default=4, ge=0, le=520)
    backup_keep_monthly: int = Field(default=6, ge=0, le=1200)
    base_keep_daily: int = Field(default=7, ge=1, le=365)
    base_keep_weekly: int = Field(default=4, ge=0, le=520)
    # A server with new WAL closes a segment this often: the RPO (margin under 60 s).
    wal_archive_timeout_s: int = Field(default=30, ge=1, le=3600)
    # `stave store setup`: uploaded prompts expire; deleted backup objects stay as versions.
    prompts_expire_days: int = Field(default=30, ge=1, le=3650)
    backup_versions_keep_days: int = Field(default=7, ge=1, le=3650)

    # Sounds-alike search: one HNSW index per encoder version (cosine). m and ef_construction
    # apply when an index is (re)built (`stave index rebuild`); ef_search at query time, raised
    # automatically when filters need more candidates.
    hnsw_m: int = Field(default=16, ge=2, le=100)
    hnsw_ef_construction: int = Field(default=64, ge=4, le=1000)
    hnsw_ef_search: int = Field(default=32, ge=1, le=1000)
    # maintenance_work_mem for an index build: a 512-d graph takes ~2.5 KB a vector.
    hnsw_build_memory_mb: int = Field(default=1024, ge=64, le=65536)

    # Latent backfills: assets per batch (one transaction and checkpoint each: large, so the
    # vectors go in with one bulk COPY), read and encoded a window at a time (the audio held in
    # memory at once), with parallel object-store reads.
    backfill_batch_size: int = Field(default=2000, ge=1, le=10_000)
    backfill_window: int = Field(default=64, ge=1, le=1000)
    backfill_fetch_threads: int = Field(default=8, ge=1, le=64)

    # Archival: root rows per Parquet group (one transaction deletes a group's rows).
    archive_batch_size: int = Field(default=250_000, ge=1, le=1_000_000)

    # Prefect's retention: `stave server` has Prefect's vacuum service delete flow runs that
    # ended more than this many days ago, with their task runs, logs and artifacts.
    prefect_retention_days: int = Field(default=30, ge=1, le=3650)

    # Prefect. Unset API URL: commands that run flows here use an ephemeral API, and the
    # orchestration commands (`stave server | pools | worker | deploy`) the local server below.
    prefect_api_url: str | None = None
    # Sent by every client and required by `stave server` (Prefect's basic auth, "user:pass").
    prefect_api_auth_string: SecretStr | None = None
    # `stave server`'s database: SQLite under <home>/<env>/data/prefect when unset; else a
    # PostgreSQL URL (its migrations need the pg_trgm extension, which pgserver lacks).
    prefect_database_url: SecretStr | None = None
    prefect_server_host: str = "127.0.0.1"
    prefect_server_port: int = Field(default=4200, ge=1, le=65535)
    # The address operators open the Prefect UI at (alerts link to runs there); unset: the
    # server's own host and port.
    prefect_ui_url: str | None = None
    # Alerts (`stave deploy` applies them as Prefect automations): a Stave deployment's run
    # that fails or crashes, and a nightly backup not completed within `backup_alert_after_h`,
    # are posted to this webhook (a secret: it usually carries a token).
    alert_webhook_url: SecretStr | None = None
    backup_alert_after_h: float = Field(default=26.0, gt=0, le=24 * 31)
    # Schedules (nightly backup, weekly archive) run in this IANA timezone.
    timezone: str = "UTC"

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        env = str(data.get("env", "dev")).lower()
        for key, value in PROFILES.get(env, {}).items():
            data.setdefault(key, value)
        return data

    @field_validator("database_url", "replica_url", mode="before")
    @classmethod
    def _normalise_database_url(cls, value: Any) -> Any:
        if isinstance(value, str):
            return normalise_pg_url(value.strip()) if value.strip() else None
        return value

    @field_validator("timezone", mode="after")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown timezone {value!r} (an IANA name, e.g. Europe/Paris)"
            ) from None
        return value

    @field_validator(
        "s3_endpoint",
        "prefect_api_url",
        "prefect_database_url",
        "prefect_api_auth_string",
        "redis_url",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        # Resolved once, so a command that changes directory still finds the same data.
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if not self.require_external_services:
            return self
        problems: list[str] = []
        if self.database_url is None:
            problems.append("STAVE_DATABASE_URL is not set (the embedded database is dev-only)")
        else:
            password = urlsplit(self.database_url.get_secret_value()).password
            if (password or "").lower() in PLACEHOLDER_SECRETS:
                problems.append("STAVE_DATABASE_URL has an empty or placeholder password")
        if self.s3_endpoint is None:
            problems.append("STAVE_S3_ENDPOINT is not set (the filesystem store is dev-only)")
        for name in ("s3_access_key", "s3_secret_key"):
            secret: SecretStr | None = getattr(self, name)
            if secret is None or secret.get_secret_value().lower() in PLACEHOLDER_SECRETS:
                problems.append(f"STAVE_{name.upper()} is empty or a placeholder")
        if problems:
            raise ValueError(f"STAVE_ENV={self.env} refuses to start: " + "; ".join(problems))
        return self

    # Derived locations: data, logs and temporary files never share a directory.
    @property
    def env_dir(self) -> Path:
        return self.home / self.env

    @property
    def data_dir(self) -> Path:
        return self.env_dir / "data"

    @property
    def log_dir(self) -> Path:
        return self.env_dir / "log"

    @property
    def tmp_dir(self) -> Path:
        return self.env_dir / "tmp"

    @property
    def data_docs_dir(self) -> Path:
        return self.log_dir / "data_docs"

    @property
    def validation_results_dir(self) -> Path:
        # Each batch's suite result, written by whichever process validated it; the Data
        # Docs are rendered from here after a job, by another.
        return self.log_dir / "validation_results"

    @property
    def prefect_home(self) -> Path:
        return self.data_dir / "prefect"

    @property
    def embedded_pg_dir(self) -> Path:
        return self.data_dir / "pg"

    @property
    def object_root(self) -> Path:
        return self.data_dir / "objects"

    @property
    def uses_embedded_db(self) -> bool:
        return self.database_url is None

    @property
    def uses_s3(self) -> bool:
        return self.s3_endpoint is not None

    def ensure_dirs(self) -> None:
        for path in (self.data_dir, self.log_dir, self.tmp_dir):
            path.mkdir(parents=True, exist_ok=True)

    def secret_values(self) -> list[str]:
        """Every configured secret in clear, for log redaction only."""
        values: list[str] = []
        for url in (self.database_url, self.prefect_database_url, self.replica_url, self.redis_url):
            if url is not None:
                password = urlsplit(url.get_secret_value()).password
                if password:
                    values.append(password)
        secrets = (
            self.s3_access_key,
            self.s3_secret_key,
            self.prefect_api_auth_string,
            self.alert_webhook_url,
        )
        for secret in secrets:
            if secret is not None and secret.get_secret_value():
                values.append(secret.get_secret_value())
        return values

    @property
    def prefect_server_url(self) -> str:
        """The Prefect API the orchestration commands talk to: the configured one, else the
        local `stave server`."""
        return self.prefect_api_url or (
            f"http://{self.prefect_server_host}:{self.prefect_server_port}/api"
        )

    def public_view(self) -> dict[str, Any]:
        """Effective settings as `stave env` shows them: secrets masked, URLs without passwords."""
        view: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if (
                name in ("database_url", "prefect_database_url", "replica_url", "redis_url")
                and value
            ):
                value = mask_url(value.get_secret_value())
            elif isinstance(value, SecretStr):
                value = "***" if value.get_secret_value() else ""
            elif isinstance(value, Path):
                value = str(value)
            view[name] = value
        return view


def load_settings(**overrides: Any) -> Settings:
    """Read settings, turning validation failures into one ConfigError line per problem."""
    try:
        return Settings(**overrides)
    except ValidationError as err:
        problems = []
        for error in err.errors():
            where = (
                "STAVE_" + "_".join(str(p) for p in error["loc"]).upper() if error["loc"] else ""
            )
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return load_settings()

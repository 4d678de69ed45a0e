"""Settings: profiles, overrides from the environment and .env, secrets, refusals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from stave.infra.errors import ConfigError
from stave.infra.settings import Settings, load_settings, mask_url, normalise_pg_url

GOOD_PROD = {
    "STAVE_ENV": "prod",
    "STAVE_DATABASE_URL": "postgresql://stave:Zq8-long-real-password@db.internal:5432/stave",
    "STAVE_S3_ENDPOINT": "minio.internal:9000",
    "STAVE_S3_ACCESS_KEY": "AKIA-real-key",
    "STAVE_S3_SECRET_KEY": "s3-real-secret-value",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    import os

    monkeypatch.chdir(tmp_path)  # no stray .env
    for key in [k for k in os.environ if k.startswith("STAVE_")]:
        monkeypatch.delenv(key)  # the session's own test settings
    return monkeypatch


def test_dev_defaults_and_layout(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("STAVE_HOME", str(tmp_path / "h"))
    s = load_settings()
    assert s.env == "dev" and s.uses_embedded_db and not s.uses_s3
    assert s.data_dir == tmp_path / "h" / "dev" / "data"
    assert s.log_dir == tmp_path / "h" / "dev" / "log"
    assert s.tmp_dir == tmp_path / "h" / "dev" / "tmp"
    assert len({s.data_dir, s.log_dir, s.tmp_dir}) == 3


def test_relative_home_resolves_against_the_working_directory(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env.delenv("STAVE_HOME", raising=False)
    assert load_settings().home == tmp_path / ".stave"


def test_profile_fills_only_what_is_not_set(env: pytest.MonkeyPatch) -> None:
    for key, value in GOOD_PROD.items():
        env.setenv(key, value)
    s = load_settings()
    assert (s.db_pool_size, s.s3_secure, s.log_level) == (20, True, "WARNING")
    env.setenv("STAVE_DB_POOL_SIZE", "7")
    env.setenv("STAVE_S3_SECURE", "false")
    s = load_settings()
    assert (s.db_pool_size, s.s3_secure) == (7, False)


def test_dotenv_file_is_read(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("STAVE_BUCKET=from-dotenv\nSTAVE_DB_POOL_SIZE=9\n")
    s = load_settings()
    assert (s.bucket, s.db_pool_size) == ("from-dotenv", 9)
    env.setenv("STAVE_BUCKET", "from-env")
    assert load_settings().bucket == "from-env"  # the environment beats .env


@pytest.mark.parametrize("env_name", ["stage", "prod"])
@pytest.mark.parametrize(
    "override,complaint",
    [
        ({"STAVE_DATABASE_URL": ""}, "STAVE_DATABASE_URL is not set"),
        ({"STAVE_DATABASE_URL": "postgresql://stave:changeme@db/stave"}, "placeholder password"),
        ({"STAVE_DATABASE_URL": "postgresql://stave@db/stave"}, "placeholder password"),
        ({"STAVE_S3_SECRET_KEY": "minioadmin"}, "STAVE_S3_SECRET_KEY is empty or a placeholder"),
        ({"STAVE_S3_ACCESS_KEY": ""}, "STAVE_S3_ACCESS_KEY is empty or a placeholder"),
        ({"STAVE_S3_ENDPOINT": ""}, "STAVE_S3_ENDPOINT is not set"),
    ],
)
def test_stage_and_prod_refuse_placeholder_secrets(
    env: pytest.MonkeyPatch, env_name: str, override: dict[str, str], complaint: str
) -> None:
    for key, value in {**GOOD_PROD, "STAVE_ENV": env_name, **override}.items():
        env.setenv(key, value)
    with pytest.raises(ConfigError, match=complaint) as err:
        load_settings()
    assert "\n" not in str(err.value)
    for secret in ("Zq8-long-real-password", "s3-real-secret-value"):
        assert secret not in str(err.value)


def test_secrets_never_appear_in_the_public_view(env: pytest.MonkeyPatch) -> None:
    for key, value in GOOD_PROD.items():
        env.setenv(key, value)
    s = load_settings()
    shown = str(s.public_view()) + repr(s) + str(s)
    for secret in ("Zq8-long-real-password", "AKIA-real-key", "s3-real-secret-value"):
        assert secret not in shown
    assert (
        s.public_view()["database_url"] == "postgresql+psycopg://stave:***@db.internal:5432/stave"
    )
    assert set(s.secret_values()) == {
        "Zq8-long-real-password",
        "AKIA-real-key",
        "s3-real-secret-value",
    }


def test_bad_values_name_the_variable(env: pytest.MonkeyPatch) -> None:
    env.setenv("STAVE_DB_POOL_SIZE", "lots")
    with pytest.raises(ConfigError, match="STAVE_DB_POOL_SIZE"):
        load_settings()
    env.delenv("STAVE_DB_POOL_SIZE")
    env.setenv("STAVE_ENV", "qa")
    with pytest.raises(ConfigError, match="STAVE_ENV"):
        load_settings()


def test_urls_are_normalised_and_masked() -> None:
    assert normalise_pg_url("postgres://u:p@h/d") == "postgresql+psycopg://u:p@h/d"
    assert normalise_pg_url("postgresql://u@h/d") == "postgresql+psycopg://u@h/d"
    assert mask_url("postgresql://u:p@h:5/d") == "postgresql://u:***@h:5/d"
    assert mask_url("postgresql://u@h/d") == "postgresql://u@h/d"


def test_the_prefect_server_prunes_its_own_runs_with_stave_s_retention(
    stave_env: Callable[..., Settings],
) -> None:
    from stave.infra.prefect_env import server_env

    env = server_env(stave_env(prefect_retention_days=12, prefect_server_port=4321))
    assert env["PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED"] == "events,flow_runs"
    assert env["PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD"] == str(12 * 86400)
    assert env["PREFECT_UI_URL"] == "http://127.0.0.1:4321"

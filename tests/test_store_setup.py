"""`stave store setup` against the S3 server and the filesystem store: rules applied once
however often it runs, other rules kept, and what the server refuses reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

from tests.test_cli import stave

pytestmark = pytest.mark.integration


def test_store_setup_applies_lifecycle_and_versioning_idempotently(
    tmp_path: Path, s3_endpoint: str, bucket_name: str
) -> None:
    env = {
        "STAVE_HOME": str(tmp_path / "home"),
        "STAVE_S3_ENDPOINT": s3_endpoint,
        "STAVE_S3_ACCESS_KEY": "test-access",
        "STAVE_S3_SECRET_KEY": "test-secret",
        "STAVE_BUCKET": bucket_name,
        "STAVE_PROMPTS_EXPIRE_DAYS": "9",
        "STAVE_GALLERY_KEEP_DAYS": "12",
    }
    client = Minio(s3_endpoint, "test-access", "test-secret", secure=False)
    client.make_bucket(bucket_name)
    theirs = Rule(
        ENABLED, rule_filter=Filter(prefix="x/"), rule_id="theirs", expiration=Expiration(days=3)
    )
    client.set_bucket_lifecycle(bucket_name, LifecycleConfig([theirs]))
    for _ in range(2):
        ran = stave("store", "setup", "--json", cwd=tmp_path, env=env)
        assert ran.returncode == 0, ran.stderr
    items = {i["item"]: i for i in json.loads(ran.stdout)["items"]}
    assert items["lifecycle"]["status"] == "applied"
    assert items["versioning"]["status"] == "applied"
    assert items["object lock"]["status"] == "refused"
    assert "at creation" in items["object lock"]["detail"]
    rules = {r.rule_id: r for r in client.get_bucket_lifecycle(bucket_name).rules}
    assert "theirs" in rules and len([r for r in rules if r.startswith("stave-")]) == 10
    # Another environment sharing the bucket adds its own rules and keeps these.
    stave(
        "store",
        "setup",
        cwd=tmp_path,
        env={
            **env,
            "STAVE_ENV": "stage",
            "STAVE_REQUIRE_EXTERNAL_SERVICES": "false",
            "STAVE_S3_SECURE": "false",
        },
    )
    rules = {r.rule_id: r for r in client.get_bucket_lifecycle(bucket_name).rules}
    assert "stave-dev-expire-prompts" in rules and "stave-stage-expire-prompts" in rules
    assert rules["stave-dev-expire-prompts"].expiration.days == 9
    assert rules["stave-dev-expire-prompts"].rule_filter.prefix == "dev/prompts/"
    # Pages people look at are bounded too: listening pages, and the Data Docs' batch pages.
    assert rules["stave-dev-expire-gallery"].expiration.days == 12
    assert rules["stave-dev-expire-gallery"].rule_filter.prefix == "dev/gallery/"
    pages = rules["stave-dev-expire-data-docs-pages"]
    assert (pages.rule_filter.prefix, pages.expiration.days) == ("dev/data-docs/validations/", 30)
    abort = rules["stave-abort-incomplete-uploads"].abort_incomplete_multipart_upload
    assert abort.days_after_initiation == 1
    assert client.get_bucket_versioning(bucket_name).status == ENABLED
    human = stave("store", "setup", cwd=tmp_path, env=env)
    assert "applied         lifecycle" in human.stdout


def test_store_setup_on_the_filesystem_store_says_not_applicable(tmp_path: Path) -> None:
    ran = stave("store", "setup", "--json", cwd=tmp_path, env={"STAVE_HOME": str(tmp_path)})
    assert ran.returncode == 0, ran.stderr
    assert {i["status"] for i in json.loads(ran.stdout)["items"]} == {"not applicable"}

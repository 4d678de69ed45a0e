"""What differs between environments (dev / stage / prod), and which secrets count as unset.

Read by `stave.infra.settings`: a profile fills in whatever the environment and `.env` did not
set.
"""

from __future__ import annotations

from typing import Any

# Profile defaults, keyed by STAVE_ENV: the one place where environments differ. Values set in
# the environment or `.env` always win over these.
PROFILES: dict[str, dict[str, Any]] = {
    "dev": {
        "log_level": "INFO",
        "db_pool_size": 5,
        "s3_secure": False,
        "require_external_services": False,
    },
    "stage": {
        "log_level": "INFO",
        "db_pool_size": 10,
        "s3_secure": True,
        "require_external_services": True,
    },
    "prod": {
        "log_level": "WARNING",
        "db_pool_size": 20,
        "s3_secure": True,
        "require_external_services": True,
    },
}

# Values that mean "nobody set this": refused as secrets outside dev.
PLACEHOLDER_SECRETS = frozenset(
    {
        "",
        "changeme",
        "change-me",
        "changethis",
        "password",
        "secret",
        "minioadmin",
        "postgres",
        "admin",
        "test",
        "example",
        "xxx",
    }
)

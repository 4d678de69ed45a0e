"""Read routing: reports, search and gallery reads go to the replica when it is fit to serve.

"Fit" means reachable, in recovery (a standby, not a promoted copy), and no further behind the
primary than `STAVE_REPLICA_MAX_LAG_S`. Otherwise reads go to the primary with a warning: a
report a little slower is better than one that fails or is stale. The verdict is kept for a few
seconds so a burst of reads costs one probe, not one each.

Writes never come here: they use `infra.db.get_engine()`, the primary.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.db import get_engine, make_engine
from stave.infra.errors import first_line
from stave.infra.settings import Settings, get_settings, mask_url

log = logging.getLogger(__name__)

# Replay lag in seconds: 0 when everything received is replayed (an idle primary sends nothing,
# so the last replayed commit's age would otherwise read as lag).
LAG_SQL = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
            ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)
       END
"""
PROBE_TTL_S = 2.0


@dataclass(frozen=True)
class ReadRoute:
    engine: Engine
    target: str  # "replica" | "primary"
    reason: str  # why the primary, when it is the primary


_lock = threading.Lock()
_replica: Engine | None = None
_replica_url: str | None = None
_verdict: tuple[float, ReadRoute] | None = None
_warned: str | None = None


def read_engine(settings: Settings | None = None) -> Engine:
    """The engine to read reports, search and gallery data from."""
    return read_route(settings).engine


def read_route(settings: Settings | None = None) -> ReadRoute:
    global _verdict
    settings = settings or get_settings()
    if settings.replica_url is None:
        return ReadRoute(get_engine(settings), "primary", "no replica configured")
    with _lock:
        now = time.monotonic()
        if _verdict is not None and now - _verdict[0] < PROBE_TTL_S:
            return _verdict[1]
        route = _probe(settings)
        _verdict = (now, route)
        _warn_once(route)
        return route


def _probe(settings: Settings) -> ReadRoute:
    global _replica, _replica_url
    assert settings.replica_url is not None
    url = settings.replica_url.get_secret_value()
    if _replica is None or _replica_url != url:
        if _replica is not None:
            _replica.dispose()
        _replica, _replica_url = make_engine(url, settings), url
    where = mask_url(url)
    try:
        with _replica.connect() as conn:
            row = conn.execute(text(LAG_SQL)).one()
    except Exception as err:  # any failure to answer: read from the primary instead
        return ReadRoute(
            get_engine(settings), "primary", f"replica {where} is down: {first_line(err)}"
        )
    in_recovery, lag = bool(row[0]), float(row[1])
    if not in_recovery:
        return ReadRoute(
            get_engine(settings), "primary", f"replica {where} is not in recovery (promoted?)"
        )
    if lag > settings.replica_max_lag_s:
        return ReadRoute(
            get_engine(settings),
            "primary",
            f"replica {where} is {lag:.1f} s behind (limit {settings.replica_max_lag_s:g} s)",
        )
    return ReadRoute(_replica, "replica", "")


def _warn_once(route: ReadRoute) -> None:
    """One warning when reads leave the replica (and a note when they come back)."""
    global _warned
    if route.target == "primary" and route.reason != _warned:
        log.warning("reading from the primary: %s", route.reason)
        _warned = route.reason
    elif route.target == "replica" and _warned is not None:
        log.info("reading from the replica again")
        _warned = None


def reset() -> None:
    """Forget the replica engine and verdict (tests, and after settings change)."""
    global _replica, _replica_url, _verdict, _warned
    with _lock:
        if _replica is not None:
            _replica.dispose()
        _replica, _replica_url, _verdict, _warned = None, None, None, None

"""A cache for hot configuration (style templates, user preferences): Redis when
`STAVE_REDIS_URL` is set, an in-process LRU otherwise; entries expire after `STAVE_CACHE_TTL_S`.

Staleness is prevented by versions, not by deletes. Every entry carries the row's version (its
`updated_at`, set with `clock_timestamp()` under the row lock, so later commits always have
larger versions), and an entry is only ever replaced by a *newer* one:

- a writer, after its commit, stores the new value with its new version;
- a reader that missed stores what it read, which is refused if a writer got there first.

So a reader holding a value read just before an update can never overwrite the update, which a
plain "delete after commit" allows. Redis being unreachable is a miss (and a warning), never an
error: reads then come from the database.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Protocol

from stave.infra.settings import Settings, get_settings, mask_url

log = logging.getLogger(__name__)

# KEYS[1]: the key; ARGV: the entry (JSON with "v"), its version, the TTL in ms.
_STORE_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, decoded = pcall(cjson.decode, current)
  if ok and tonumber(decoded['v']) >= tonumber(ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""


class ConfigCache(Protocol):
    def get(self, key: str) -> tuple[bool, Any]:
        """(hit, value); a miss is (False, None)."""
        ...

    def store_if_newer(self, key: str, value: Any, version: float) -> bool:
        """Keep `value` unless the cache holds a version at least as new; True if stored."""
        ...


class LocalCache:
    """In-process LRU with TTL: per process, so other processes' updates reach it only when an
    entry expires (use Redis when several workers share templates)."""

    def __init__(self, ttl_s: float, max_entries: int = 4096) -> None:
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._entries: OrderedDict[str, tuple[float, float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[bool, Any]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] < time.monotonic():
                self._entries.pop(key, None)
                return False, None
            self._entries.move_to_end(key)
            return True, entry[2]

    def store_if_newer(self, key: str, value: Any, version: float) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] >= time.monotonic() and entry[1] >= version:
                return False
            self._entries[key] = (time.monotonic() + self.ttl_s, version, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return True


class RedisCache:
    """Redis with short timeouts; any Redis failure is a miss and one warning per minute."""

    def __init__(self, url: str, ttl_s: float, timeout_s: float = 0.5) -> None:
        import redis

        self.where = mask_url(url)
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self._client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )
        self._store = self._client.register_script(_STORE_IF_NEWER)
        self._warned_at = 0.0

    def get(self, key: str) -> tuple[bool, Any]:
        import redis

        try:
            raw = self._client.get(key)
        except redis.RedisError as err:
            self._warn(err)
            return False, None
        if raw is None:
            return False, None
        return True, json.loads(raw)["d"]

    def store_if_newer(self, key: str, value: Any, version: float) -> bool:
        import redis

        entry = json.dumps({"v": version, "d": value}, separators=(",", ":"), default=str)
        try:
            return bool(self._store(keys=[key], args=[entry, repr(version), self.ttl_ms]))
        except redis.RedisError as err:
            self._warn(err)
            return False

    def _warn(self, err: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at > 60:
            self._warned_at = now
            log.warning("cache at %s unavailable, reading from the database: %s", self.where, err)


_cache: ConfigCache | None = None
_cache_for: tuple[str | None, float] | None = None
_cache_lock = threading.Lock()


def get_cache(settings: Settings | None = None) -> ConfigCache:
    """The process's cache for the current settings."""
    global _cache, _cache_for
    settings = settings or get_settings()
    url = settings.redis_url.get_secret_value() if settings.redis_url is not None else None
    wanted = (url, settings.cache_ttl_s)
    with _cache_lock:
        if _cache is None or _cache_for != wanted:
            _cache = (
                RedisCache(url, settings.cache_ttl_s) if url else LocalCache(settings.cache_ttl_s)
            )
            _cache_for = wanted
        return _cache


def cache_key(settings: Settings, kind: str, name: str) -> str:
    """Namespaced by environment and database, so stage and prod may share one Redis."""
    return f"stave:{settings.env}:{settings.database_name}:{kind}:{name}"

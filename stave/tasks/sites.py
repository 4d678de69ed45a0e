"""Static sites in the object store, where people look: a job's listening page and the Data Docs.

A site built in a local folder (the gallery's `index.html` with its audio and spectrograms;
Great Expectations' Data Docs) is put under one prefix (`<env>/gallery/<job>/`,
`<env>/data-docs/`), each file under a safe key (`keys.site_key`), and its pages' links are
rewritten to match: relative links between the keys on the filesystem store (the site opens
from disk), presigned links on S3 (each object carries its own signature, so the site opens
from a private bucket for as long as the links last). The index's link is what the flow puts
in its Prefect artifacts.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import posixpath
import re
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from stave.infra.objectstore import ObjectStore
from stave.infra.objectstore.keys import data_docs_prefix, gallery_prefix, site_key
from stave.infra.settings import Settings
from stave.tasks import gallery, validation

# A page's links to the site's own files: src="…" and href="…" that are not absolute URLs,
# fragments or queries (those pass through as they are).
_LINK = re.compile(r"""\b(src|href)=(["'])(?![a-z][a-z0-9+.-]*:|#|//)([^"'#?]+)([^"']*)\2""")
PAGE_TYPES = (".html", ".htm")


@dataclass
class PublishedSite:
    prefix: str
    index_url: str
    files: int


@dataclass
class JobPages:
    gallery: str | None = None
    data_docs: str | None = None
    clips: int = 0
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gallery": self.gallery,
            "data_docs": self.data_docs,
            "clips": self.clips,
            "problems": self.problems,
        }


def publish_site(
    store: ObjectStore,
    folder: Path,
    prefix: str,
    expires: timedelta,
    *,
    changed_since: float | None = None,
) -> PublishedSite:
    """Put the site in `folder` under `prefix`: its files first, then its pages, so a page
    never links to what is not there yet; the index page's link. With `changed_since` (a
    time), only the files written after it and the index are put: the rest is there."""
    files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    keys = {rel: site_key(prefix, rel) for rel in files}
    wanted = set(files)
    if changed_since is not None:
        wanted = {rel for rel in files if rel == "index.html" or _mtime(files[rel]) > changed_since}
    pages = [rel for rel in files if rel.endswith(PAGE_TYPES) and rel in wanted]
    published = 0
    # Another run on this host may be rebuilding the same site (Data Docs) meanwhile: a file
    # that went between the listing and the read is that run's to publish, not an error.
    for rel, path in files.items():
        if rel in wanted and rel not in pages:
            with contextlib.suppress(FileNotFoundError), open(path, "rb") as stream:
                store.put_stream(keys[rel], stream, content_type=_content_type(rel))
                published += 1
    for rel in pages:
        try:
            page = files[rel].read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        text = _rewrite(page, rel, keys, store, expires)
        store.put_bytes(keys[rel], text.encode(), content_type="text/html; charset=utf-8")
        published += 1
    return PublishedSite(prefix, store.url(keys["index.html"], expires), published)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _rewrite(
    page: str, page_rel: str, keys: dict[str, str], store: ObjectStore, expires: timedelta
) -> str:
    here = posixpath.dirname(page_rel)
    page_dir = posixpath.dirname(keys[page_rel])

    def swap(match: re.Match[str]) -> str:
        attribute, quote, target, rest = match.groups()
        resolved = posixpath.normpath(posixpath.join(here, target))
        if resolved not in keys:
            return match.group(0)
        if store.relative_links:
            link = posixpath.relpath(keys[resolved], page_dir)
        else:
            link = store.url(keys[resolved], expires)
            rest = ""  # a presigned link carries its own query
        return f"{attribute}={quote}{link}{rest}{quote}"

    return _LINK.sub(swap, page)


def _content_type(name: str) -> str:
    """Served with the right type, so a browser plays, shows or styles it, not downloads it."""
    known = {
        ".flac": "audio/flac",
        ".png": "image/png",
        ".css": "text/css",
        ".js": "text/javascript",
    }
    suffix = posixpath.splitext(name)[1].lower()
    return known.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def publish_job_pages(
    engine: Engine, store: ObjectStore, settings: Settings, job_id: uuid.UUID
) -> JobPages:
    """The job's listening page (its first clips, with their neighbours) and the Data Docs,
    built here and put in the store; their links. The Data Docs are built on a second thread
    while the listening page is: the pages take the longer of the two, not both."""
    expires = timedelta(hours=settings.link_expiry_h)
    pages = JobPages()
    with ThreadPoolExecutor(1, thread_name_prefix="stave-docs") as side:
        docs = side.submit(publish_data_docs, store, settings)
        clips = gallery.select_job(engine, job_id, settings.gallery_max_clips)
        if clips:
            settings.tmp_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=settings.tmp_dir) as scratch:
                folder = Path(scratch) / "gallery"
                made = gallery.build(engine, store, settings, folder, clips, f"Job {job_id}")
                site = publish_site(store, folder, gallery_prefix(settings.env, job_id), expires)
            pages.gallery, pages.clips = site.index_url, made.clips
            pages.problems = made.problems
        pages.data_docs = docs.result().data_docs
    return pages


def publish_data_docs(store: ObjectStore, settings: Settings) -> JobPages:
    """The validation results no page shows yet rendered, and what changed of the Data Docs
    since they were last put in the store, put there; the index's link."""
    validation.build_data_docs(settings)
    folder = settings.data_docs_dir
    if not (folder / "index.html").is_file():
        return JobPages()
    marker = folder.parent / "data_docs.published"  # beside the site: not a page of it
    started = time.time()
    since = _mtime(marker) or None
    docs = publish_site(
        store,
        folder,
        data_docs_prefix(settings.env),
        timedelta(hours=settings.link_expiry_h),
        changed_since=since,
    )
    marker.touch()
    os.utime(marker, (started, started))  # what changes while putting is put next time
    _delete_pruned_pages(store, folder, data_docs_prefix(settings.env))
    return JobPages(data_docs=docs.index_url)


def _delete_pruned_pages(store: ObjectStore, folder: Path, prefix: str) -> None:
    """The store's copies of pages pruned from the Data Docs (past STAVE_DATA_DOCS_KEEP_DAYS)
    deleted. The list is taken by renaming it, so pages pruned meanwhile are listed anew."""
    listing = validation.removed_pages_file(folder)
    taken = listing.with_name(f"{listing.name}.{os.getpid()}")
    try:
        listing.rename(taken)
    except FileNotFoundError:
        return
    pages = [line for line in taken.read_text(encoding="utf-8").splitlines() if line]
    store.delete_many(site_key(prefix, page) for page in pages)
    taken.unlink()


def data_docs_link(store: ObjectStore, settings: Settings) -> str:
    """Where the Data Docs' index is (or will be, once the pages are put)."""
    return store.url(
        site_key(data_docs_prefix(settings.env), "index.html"),
        timedelta(hours=settings.link_expiry_h),
    )


def gallery_link(store: ObjectStore, settings: Settings, job_id: uuid.UUID) -> str:
    """Where a job's listening page is (or will be, once the pages are put)."""
    return store.url(
        site_key(gallery_prefix(settings.env, job_id), "index.html"),
        timedelta(hours=settings.link_expiry_h),
    )

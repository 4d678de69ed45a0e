"""A static listening gallery: one HTML page, the clips' audio, their spectrograms.

It opens from the file system with no server: relative links only, audio copied out of the
store (checked against its recorded sha256), spectrograms as PNG files written here (no
plotting library), styles inline. A small script marks each player and image as loaded or
failed, so a broken file shows on the page rather than as a silent gap.
"""

from __future__ import annotations

import html
import io
import os
import struct
import uuid
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.errors import InvalidInput, NotFound, ObjectCorrupted, ObjectNotFound
from stave.infra.objectstore import ObjectStore
from stave.infra.settings import Settings
from stave.tasks import search

MAX_CLIPS = 500


@dataclass
class GalleryClip:
    asset_id: uuid.UUID
    object_key: str
    sha256: str
    prompt: str | None
    details: dict[str, Any]
    neighbours: list[search.Neighbour] = field(default_factory=list)
    problem: str | None = None


@dataclass
class Gallery:
    path: Path
    title: str
    clips: int
    audio_files: int
    problems: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "title": self.title,
            "clips": self.clips,
            "audio_files": self.audio_files,
            "problems": self.problems,
        }


_CLIP_SQL = (
    "SELECT a.id, a.object_key, a.sha256, a.duration_s, a.sample_rate, a.loudness_lufs, "
    "a.peak_dbfs, a.user_id, a.created_at, t.prompt, t.lyrics, t.parameters, t.status, "
    "t.provenance->'actual_seeds' AS seeds, mv.name || ':' || mv.version AS model "
    "FROM audio_asset a LEFT JOIN generation_task t ON t.id = a.task_id "
    "LEFT JOIN model_version mv ON mv.id = a.model_version_id "
)


def _clips(engine: Engine, where: str, params: dict[str, Any], limit: int) -> list[GalleryClip]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(f"{_CLIP_SQL} WHERE {where} ORDER BY a.created_at, a.id LIMIT :limit"),
            {**params, "limit": limit},
        ).all()
    clips = []
    for r in rows:
        parameters = dict(r.parameters or {})
        details = {
            "duration": f"{r.duration_s:.2f} s",
            "steps": parameters.get("steps"),
            "guidance": parameters.get("guidance"),
            "scheduler": parameters.get("scheduler"),
            "seed": (r.seeds or [parameters.get("seed")])[0],
            "model": r.model,
            "loudness": f"{r.loudness_lufs:.1f} LUFS" if r.loudness_lufs is not None else None,
            "peak": f"{r.peak_dbfs:.1f} dBFS" if r.peak_dbfs is not None else None,
            "user": r.user_id,
            "status": r.status,
            "created": r.created_at.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "lyrics": r.lyrics,
        }
        clips.append(
            GalleryClip(
                r.id, r.object_key, r.sha256, r.prompt, {k: v for k, v in details.items() if v}
            )
        )
    return clips


def select_job(engine: Engine, job_id: uuid.UUID, limit: int) -> list[GalleryClip]:
    with engine.connect() as conn:
        if (
            conn.execute(text("SELECT 1 FROM generation_job WHERE id = :j"), {"j": job_id}).first()
            is None
        ):
            raise NotFound(f"job {job_id}: no such job")
    clips = _clips(
        engine,
        "a.task_id IN (SELECT id FROM generation_task WHERE job_id = :j AND status = 'published')",
        {"j": job_id},
        limit,
    )
    if not clips:
        raise NotFound(f"job {job_id} has no published clips yet")
    return clips


def select_similar(
    engine: Engine,
    settings: Settings,
    asset_id: uuid.UUID,
    k: int,
    encoder: str | None,
    user_id: str | None = None,
) -> list[GalleryClip]:
    found = search.similar(
        engine, settings, asset_id=asset_id, k=k, encoder_version=encoder, user_id=user_id
    )
    ids = [asset_id, *(n.asset_id for n in found.neighbours)]
    clips = {c.asset_id: c for c in _clips(engine, "a.id = ANY(:ids)", {"ids": ids}, len(ids))}
    return [clips[i] for i in ids if i in clips]


def build(
    engine: Engine,
    store: ObjectStore,
    settings: Settings,
    out: Path,
    clips: list[GalleryClip],
    title: str,
    *,
    neighbours: int = 5,
    encoder: str | None = None,
    user_id: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> Gallery:
    """Write `out/index.html` with `out/audio/*.flac` and `out/img/*.png`."""
    if out.exists() and not out.is_dir():
        raise InvalidInput(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "index.html").is_file():
        raise InvalidInput(f"{out} is not empty and not a gallery: choose another directory")
    (out / "audio").mkdir(parents=True, exist_ok=True)
    (out / "img").mkdir(exist_ok=True)
    copied: set[uuid.UUID] = set()
    problems: list[str] = []
    in_page = {c.asset_id for c in clips}
    keys: dict[uuid.UUID, tuple[str, str]] = {}

    def one(clip: GalleryClip) -> list[str]:
        """The clip's audio, spectrogram and neighbours; its problems."""
        found: list[str] = []
        try:
            audio, rate = _copy_audio(store, clip.object_key, clip.sha256, out, clip.asset_id)
            (out / "img" / f"{clip.asset_id}.png").write_bytes(spectrogram_png(audio, rate))
        except (ObjectNotFound, ObjectCorrupted) as err:
            clip.problem = str(err)
            found.append(f"{clip.asset_id}: {err}")
        if neighbours and clip.problem is None:
            try:
                clip.neighbours = search.similar(
                    engine,
                    settings,
                    asset_id=clip.asset_id,
                    k=neighbours,
                    encoder_version=encoder,
                    user_id=user_id,
                ).neighbours
            except NotFound as err:
                found.append(f"{clip.asset_id}: {err}")
        return found

    # Clips side by side, one thread per core: reading and decoding the FLAC, the FFT, the PNG's
    # zlib and the neighbour query all release the GIL. Results are taken in page order.
    with ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="stave-gallery") as pool:
        for clip, found in zip(clips, pool.map(one, clips), strict=True):
            problems += found
            if clip.problem is None:
                copied.add(clip.asset_id)
            for n in clip.neighbours:
                if n.asset_id not in in_page:
                    keys.setdefault(n.asset_id, (n.object_key, n.sha256))
            if progress is not None:
                progress(1)
    # Neighbours outside the gallery get their audio too, so every row can be listened to.
    for asset_id, (key, sha) in keys.items():
        try:
            _copy_audio(store, key, sha, out, asset_id)
            copied.add(asset_id)
        except (ObjectNotFound, ObjectCorrupted) as err:
            problems.append(f"{asset_id}: {err}")
    page = render_page(title, clips, in_page, copied)
    tmp = out / "index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out / "index.html")
    return Gallery(out / "index.html", title, len(clips), len(copied), problems)


def _copy_audio(
    store: ObjectStore, key: str, sha256: str, out: Path, asset_id: uuid.UUID
) -> tuple[np.ndarray, int]:
    import soundfile

    data = store.get_bytes(key, expected_sha256=sha256)
    (out / "audio" / f"{asset_id}.flac").write_bytes(data)
    audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=False)
    return (audio.mean(axis=1) if audio.ndim == 2 else audio), int(rate)


# -- spectrograms ------------------------------------------------------------------------------
# A perceptual dark-to-bright ramp (close to matplotlib's magma) as anchor colours.
_RAMP = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float64,
)
# The ramp sampled at 256 levels: colouring a spectrogram is one table lookup.
_COLOURS = np.stack(
    [
        np.interp(np.linspace(0, len(_RAMP) - 1, 256), np.arange(len(_RAMP)), _RAMP[:, c])
        for c in range(3)
    ],
    axis=1,
).astype(np.uint8)


def spectrogram_png(audio: np.ndarray, rate: int, width: int = 480, height: int = 160) -> bytes:
    """A log-frequency, dB-scaled spectrogram of the clip as a PNG (numpy, zlib)."""
    import scipy.fft

    n_fft, hop = 1024, max(1, len(audio) // width)
    padded = np.pad(np.asarray(audio, dtype=np.float32), (0, n_fft))
    starts = np.arange(0, max(1, len(audio)), hop)[:width]
    # Strided views, not copies, and a float32 FFT: a page of 200 clips is built in seconds.
    windows = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[starts]
    spectrum = scipy.fft.rfft(windows * np.hanning(n_fft).astype(np.float32), axis=1)
    freqs = np.fft.rfftfreq(n_fft, 1 / rate)
    # Rows spaced evenly in log frequency from 40 Hz to Nyquist, highest at the top.
    rows = np.geomspace(40, rate / 2, height)[::-1]
    bins = np.clip(np.searchsorted(freqs, rows), 1, len(freqs) - 1)
    picked = spectrum[:, bins].T  # (freq, time)
    db = 10 * np.log10(picked.real**2 + picked.imag**2 + 1e-10)
    level = np.clip((db - (db.max() - 80)) / 80, 0, 1)
    return _png(_COLOURS[np.rint(level * 255).astype(np.uint8)])


def _png(rgb: np.ndarray) -> bytes:
    height, width, _ = rgb.shape
    # Each scanline starts with filter type 0 (none).
    raw = np.hstack([np.zeros((height, 1), np.uint8), rgb.reshape(height, -1)]).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        # Level 1: a quarter of level 6's time on spectrograms for about a sixth more bytes.
        + chunk(b"IDAT", zlib.compress(raw, 1))
        + chunk(b"IEND", b"")
    )


# -- the page ----------------------------------------------------------------------------------
_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#1d1d1f;
background:#fafafa;padding:0 1rem}h1{font-size:1.4rem}.meta{color:#555;font-size:.85rem}
.clip{background:#fff;border:1px solid #e2e2e2;border-radius:8px;padding:1rem;margin:1rem 0;
display:grid;grid-template-columns:480px 1fr;gap:1rem}.clip img{width:480px;height:160px;
border-radius:4px;display:block}.clip audio{width:480px;margin-top:.4rem}.prompt{font-weight:600}
dl{display:grid;grid-template-columns:auto 1fr;gap:.1rem .8rem;margin:.5rem 0;font-size:.85rem}
dt{color:#777}dd{margin:0}ol{padding-left:1.2rem;font-size:.85rem}li{margin:.3rem 0}
li audio{height:28px;width:260px;vertical-align:middle}.d{font-family:monospace;color:#555}
.problem{color:#b00020}[data-state=error]{outline:2px solid #b00020}
"""

_SCRIPT = """
(function(){
  var media = document.querySelectorAll('audio, img');
  var ok = 0, bad = 0, total = media.length;
  function show(){ document.getElementById('status').textContent =
    ok + ' of ' + total + ' players and images loaded' + (bad ? ', ' + bad + ' failed' : ''); }
  media.forEach(function(el){
    function done(state){ if (el.dataset.state) return; el.dataset.state = state;
      if (state === 'ready') ok++; else bad++; show(); }
    if (el.tagName === 'IMG') {
      if (el.complete && el.naturalWidth > 0) done('ready');
      el.addEventListener('load', function(){ done('ready'); });
      el.addEventListener('error', function(){ done('error'); });
    } else {
      if (el.readyState >= 1) done('ready');
      el.addEventListener('loadedmetadata', function(){ done('ready'); });
      el.addEventListener('error', function(){ done('error'); }, true);
    }
  });
  show();
})();
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def render_page(
    title: str, clips: list[GalleryClip], in_page: set[uuid.UUID], audio: set[uuid.UUID]
) -> str:
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1><p class=meta>{len(clips)} clip(s) · <span id=status></span></p>",
    ]
    for clip in clips:
        parts.append(f'<section class=clip id="c-{clip.asset_id}"><div>')
        if clip.problem:
            parts.append(f"<p class=problem>{_e(clip.problem)}</p>")
        else:
            parts.append(
                f'<img src="img/{clip.asset_id}.png" alt="spectrogram of {clip.asset_id}" '
                f"width=480 height=160><audio controls preload=metadata "
                f'src="audio/{clip.asset_id}.flac"></audio>'
            )
        parts.append("</div><div>")
        parts.append(f"<div class=prompt>{_e(clip.prompt or '(no prompt recorded)')}</div>")
        parts.append(f"<div class=meta>asset {_e(clip.asset_id)}</div><dl>")
        for key, value in clip.details.items():
            parts.append(f"<dt>{_e(key)}</dt><dd>{_e(value)}</dd>")
        parts.append("</dl>")
        if clip.neighbours:
            parts.append("<div class=meta>sounds like</div><ol>")
            for n in clip.neighbours:
                label = _e(n.prompt or n.asset_id)
                link = f'<a href="#c-{n.asset_id}">{label}</a>' if n.asset_id in in_page else label
                player = (
                    f' <audio controls preload=metadata src="audio/{n.asset_id}.flac"></audio>'
                    if n.asset_id in audio
                    else ""
                )
                parts.append(f"<li><span class=d>{n.distance:.3f}</span> {link}{player}</li>")
            parts.append("</ol>")
        parts.append("</div></section>")
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "".join(parts)

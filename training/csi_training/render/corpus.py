"""The rendered-versions corpus on disk: FLAC files, a CSV manifest and the provenance of every version.

Layout under out_dir::

    audio/<work dir>/v00.flac ...   one file per version (16-bit FLAC, mono)
    manifest.csv                    path,work_id,version_id  (paths relative to out_dir)
    versions.json                   corpus settings + every VersionParams + failures

Rendering is resumable (files already complete are kept: every file is written to a temporary
name and renamed), deterministic (version parameters are a function of seed, work id and version
index) and robust (a version that fails to render is logged, recorded in versions.json and left
out of the manifest; the others go on).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import multiprocessing
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from csi_training.render import effects, synth
from csi_training.render.notes import Work
from csi_training.render.versions import (
    VersionConfig,
    VersionParams,
    apply_version,
    make_versions,
    stable_hash,
)

log = logging.getLogger(__name__)

RENDERERS = ("synth", "fluidsynth")
CORPUS_FORMAT = "csi-rendered-versions"
CORPUS_VERSION = 1
MANIFEST_HEADER = ("path", "work_id", "version_id")
REVERB_TAIL_FACTOR = 0.5  # rendered past the last note-off: this share of RT60 (+ the release)


class RenderError(RuntimeError):
    """A version that cannot be rendered (no notes left, silent output, renderer failure)."""


def render_version(
    work: Work,
    params: VersionParams,
    renderer: str = "synth",
    sample_rate: int = 16000,
    max_duration_s: float | None = None,
    offline: bool = True,
) -> np.ndarray:
    """One version as audio: float32 [n] mono at sample_rate, peak ≤ 0.99, at most max_duration_s long.

    renderer: "synth" (fast, in-process) or "fluidsynth" (the params' soundfont); offline=False
    replaces the ffmpeg MP3 round trip by the cheap codec stand-in.
    """
    if renderer not in RENDERERS:
        raise ValueError(f"renderer must be one of {RENDERERS}, got {renderer!r}")
    arrangement = apply_version(work, params, max_duration_s=max_duration_s)
    if arrangement.n_notes == 0:
        raise RenderError(f"{work.work_id} v{params.version_index}: no notes left to play")
    duration = arrangement.duration_s + 0.5 + REVERB_TAIL_FACTOR * params.reverb_rt60_s
    if max_duration_s is not None:
        duration = min(duration, max_duration_s)
    if renderer == "synth":
        dry = synth.synthesize(arrangement, sample_rate, duration)
    else:
        from csi_training.render.fluidsynth import render_fluidsynth

        dry = render_fluidsynth(arrangement, sample_rate, params.soundfont, duration_s=duration)
    if not np.any(np.abs(dry) > 1e-6):
        raise RenderError(f"{work.work_id} v{params.version_index}: the {renderer} render is silent")
    rng = np.random.default_rng([params.seed, 2])
    return effects.produce(dry, sample_rate, params, rng, offline=offline)


def work_dir_name(work_id: str) -> str:
    """A file-system-safe, collision-free folder name for a work id."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", work_id).strip("._")[:80]
    return f"{slug}-{stable_hash(work_id) & 0xFFFFFFFF:08x}"


def version_id(index: int) -> str:
    return f"v{index:02d}"


@dataclasses.dataclass(frozen=True)
class CorpusSettings:
    """What determines the corpus' content (a resumed render must match it)."""

    renderer: str
    sample_rate: int
    seed: int
    versions_per_work: int
    max_duration_s: float | None
    version_config: dict[str, Any]


def _atomic_write(path: Path, data: bytes) -> None:
    from csi_training.render.notes import _atomic_write_bytes

    _atomic_write_bytes(path, data)


def _write_flac(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, format="FLAC", subtype="PCM_16")
    _atomic_write(path, buffer.getvalue())


def _is_complete(path: Path, sample_rate: int) -> bool:
    import soundfile as sf

    if not path.is_file():
        return False
    try:
        info = sf.info(str(path))
    except Exception:
        return False
    return info.samplerate == sample_rate and info.frames > 0


@dataclasses.dataclass(frozen=True)
class _Job:
    work: Work
    params: tuple[VersionParams, ...]
    paths: tuple[str, ...]
    renderer: str
    sample_rate: int
    max_duration_s: float | None


def _render_job(job: _Job) -> list[tuple[str, str | None, float]]:
    """Render the versions of one work: [(path, error or None, seconds)]."""
    results: list[tuple[str, str | None, float]] = []
    for params, path in zip(job.params, job.paths):
        start = time.perf_counter()
        try:
            audio = render_version(job.work, params, job.renderer, job.sample_rate, job.max_duration_s)
            _write_flac(Path(path), audio, job.sample_rate)
            results.append((path, None, time.perf_counter() - start))
        except Exception as exc:  # one broken piece must not stop a corpus of thousands
            results.append((path, f"{type(exc).__name__}: {exc}", time.perf_counter() - start))
    return results


def select_works(
    works: Sequence[Work],
    work_ids: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[Work]:
    """Works filtered by id and/or collection, then the first `limit` of them (input order)."""
    selected = list(works)
    if work_ids is not None:
        by_id = {w.work_id: w for w in selected}
        missing = [i for i in work_ids if i not in by_id]
        if missing:
            raise ValueError(f"{len(missing)} work ids are not among the works given, e.g. {missing[:3]}")
        selected = [by_id[i] for i in work_ids]
    if sources is not None:
        wanted = set(sources)
        selected = [w for w in selected if w.source in wanted]
    if limit is not None:
        selected = selected[:limit]
    return selected


def render_corpus(
    out_dir: str | os.PathLike[str],
    works: Sequence[Work],
    versions_per_work: int,
    renderer: str = "synth",
    sample_rate: int = 16000,
    seed: int = 0,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    max_duration_s: float | None = None,
    version_config: VersionConfig = VersionConfig(),  # noqa: B008 - frozen
    work_ids: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    limit: int | None = None,
) -> Path:
    """Render `versions_per_work` versions of each selected work; returns the manifest path.

    works: e.g. `load_note_corpus(...)`; work_ids / sources / limit select among them (see
    `select_works`); progress(n_done, n_total) counts versions (skipped ones included);
    max_duration_s: cut each version to this length; workers: rendering processes.
    Re-running with the same arguments resumes, and with more versions per work extends the corpus
    (the versions already there are kept); other different settings in an existing out_dir are an error.
    """
    if renderer not in RENDERERS:
        raise ValueError(f"renderer must be one of {RENDERERS}, got {renderer!r}")
    if versions_per_work < 1 or workers < 1 or sample_rate <= 0:
        raise ValueError("versions_per_work, workers and sample_rate must be positive")
    if max_duration_s is not None and max_duration_s <= 0:
        raise ValueError(f"max_duration_s must be > 0, got {max_duration_s}")
    if renderer == "fluidsynth":  # fail before hours of work, not at the first version
        from csi_training.render.fluidsynth import find_fluidsynth, find_soundfont

        find_fluidsynth()
        for name in version_config.soundfonts:
            find_soundfont(name)
    selected = select_works(works, work_ids, sources, limit)
    if not selected:
        raise ValueError("no works selected")
    out = Path(out_dir)
    settings = CorpusSettings(
        renderer=renderer,
        sample_rate=sample_rate,
        seed=seed,
        versions_per_work=versions_per_work,
        max_duration_s=max_duration_s,
        version_config=json.loads(json.dumps(dataclasses.asdict(version_config))),
    )
    meta_path = out / "versions.json"
    if meta_path.is_file():
        previous = json.loads(meta_path.read_text())
        ours = dataclasses.asdict(settings)
        before = previous.get("settings")
        # more versions per work extend a corpus: version k depends only on (seed, work, k)
        grows = (
            isinstance(before, dict)
            and {**before, "versions_per_work": versions_per_work} == ours
            and isinstance(before.get("versions_per_work"), int)
            and before["versions_per_work"] <= versions_per_work
        )
        if before != ours and not grows:
            raise ValueError(
                f"{out} holds a corpus rendered with other settings ({before}); "
                "use another out_dir, the same settings to resume, or more versions per work to extend it"
            )

    jobs, entries, all_params = [], [], []
    n_total = n_done = 0
    for work in selected:
        versions = make_versions(work, versions_per_work, seed, version_config)
        folder = out / "audio" / work_dir_name(work.work_id)
        todo_params, todo_paths = [], []
        for params in versions:
            path = folder / f"{version_id(params.version_index)}.flac"
            entries.append((path, work.work_id, version_id(params.version_index)))
            all_params.append(params.to_dict())
            n_total += 1
            if _is_complete(path, sample_rate):
                n_done += 1
            else:
                todo_params.append(params)
                todo_paths.append(str(path))
        if todo_params:
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append(
                _Job(work, tuple(todo_params), tuple(todo_paths), renderer, sample_rate, max_duration_s)
            )

    meta: dict[str, Any] = {
        "format": CORPUS_FORMAT,
        "version": CORPUS_VERSION,
        "settings": dataclasses.asdict(settings),
        "works": {
            w.work_id: {"title": w.title, "source": w.source, "dir": work_dir_name(w.work_id)}
            for w in selected
        },
        "versions": all_params,
        "failed": {},
    }
    _atomic_write(meta_path, json.dumps(meta, indent=1, allow_nan=False).encode())
    log.info("rendering %d versions (%d already done) of %d works", n_total - n_done, n_done, len(selected))
    if progress is not None:
        progress(n_done, n_total)

    failed: dict[str, str] = {}
    seconds = 0.0

    def collect(results: list[tuple[str, str | None, float]]) -> None:
        nonlocal n_done, seconds
        for path, error, took in results:
            n_done += 1
            seconds += took
            if error is not None:
                failed[os.path.relpath(path, out)] = error
                log.warning("failed to render %s: %s", path, error)
            if progress is not None:
                progress(n_done, n_total)

    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            collect(_render_job(job))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            for results in pool.map(_render_job, jobs):
                collect(results)

    rows = [(p.relative_to(out).as_posix(), wid, vid) for p, wid, vid in entries if p.is_file()]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_HEADER)
    writer.writerows(rows)
    manifest = out / "manifest.csv"
    _atomic_write(manifest, buffer.getvalue().encode())
    meta["failed"] = failed
    meta["render_seconds"] = round(seconds, 2)
    _atomic_write(meta_path, json.dumps(meta, indent=1, allow_nan=False).encode())
    log.info("corpus at %s: %d files, %d failed", out, len(rows), len(failed))
    return manifest


def read_manifest(path: str | os.PathLike[str]) -> list[tuple[str, str, str]]:
    """Rows (path relative to the manifest's folder, work_id, version_id) of a manifest.csv."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header[:3]) != MANIFEST_HEADER:
            raise ValueError(f"{path}: expected header {','.join(MANIFEST_HEADER)}, got {header}")
        return [(r[0], r[1], r[2]) for r in reader if r]


__all__ = [
    "RENDERERS",
    "CorpusSettings",
    "RenderError",
    "read_manifest",
    "render_corpus",
    "render_version",
    "select_works",
    "version_id",
    "work_dir_name",
]

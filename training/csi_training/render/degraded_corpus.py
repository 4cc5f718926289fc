"""Broadcast-degraded copies of a rendered corpus, as extra training versions.

A monitoring service hears versions through a broadcast chain (speed change, pitch shift, EQ,
compression, talk over the music, noise, MP3). Training on a few degraded copies of each work's
recordings teaches the encoder that these are not what makes a version: each copy is one of the
work's recordings (drawn at random) under a random chain of 1-3 degradations of
``csi_training.render.broadcast`` (applied in broadcast order), written as FLAC next to a manifest
``path,work_id,version_id`` whose version ids are ``<source version>+bc<k>``, and ``copies.csv``
that names each copy's source recording and chain.

Held-out works are never touched (pass the training manifest), so evaluations on unseen works stay
honest; the degradations themselves are the ones the robustness table measures.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from csi_training.render.broadcast import degrade_chain, random_chain

__all__ = ["DegradedCopy", "degrade_corpus", "plan_copies"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DegradedCopy:
    """One planned copy: source recording, its work, the copy's relative path and its chain."""

    source: str
    work_id: str
    version_id: str
    path: str
    chain: tuple[str, ...]
    seed: int


def _stable_seed(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def plan_copies(rows: Sequence[dict[str, str]], copies_per_work: int, seed: int = 0) -> list[DegradedCopy]:
    """The copies to make: ``copies_per_work`` per work of ``rows`` (manifest rows with path,
    work_id[, version_id]), each from a recording of the work drawn at random. Deterministic in
    (rows, copies_per_work, seed), whatever order the rows come in."""
    if copies_per_work < 1:
        raise ValueError(f"copies_per_work must be >= 1 (got {copies_per_work})")
    by_work: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_work.setdefault(row["work_id"], []).append(row)
    plan = []
    for work_id in sorted(by_work):
        recordings = sorted(by_work[work_id], key=lambda r: r["path"])
        for k in range(copies_per_work):
            copy_seed = _stable_seed(seed, work_id, k)
            rng = np.random.default_rng(copy_seed)
            src = recordings[int(rng.integers(len(recordings)))]
            chain = random_chain(rng)
            version = f"{src.get('version_id') or Path(src['path']).stem}+bc{k}"
            folder = hashlib.sha1(work_id.encode()).hexdigest()[:12]
            plan.append(
                DegradedCopy(
                    src["path"], work_id, version, f"audio/{folder}/{version}.flac", chain, copy_seed
                )
            )
    return plan


def _make(args: tuple[DegradedCopy, str, str, int]) -> tuple[str, str | None]:
    """Writes one copy (atomically); returns (path, error or None)."""
    import soundfile as sf

    from csi_runtime.atomic import atomic_open

    copy, source_root, out_root, sample_rate = args
    out = Path(out_root) / copy.path
    if out.exists():
        return copy.path, None
    try:
        src = Path(copy.source)
        x, sr = sf.read(
            src if src.is_absolute() else Path(source_root) / src, dtype="float32", always_2d=True
        )
        if sr != sample_rate:
            raise ValueError(f"sample rate {sr} Hz, expected {sample_rate}")
        y = x.mean(axis=1)
        rng = np.random.default_rng([copy.seed, 1])
        y = degrade_chain(y, copy.chain, rng, sample_rate)
        y = np.clip(y, -1.0, 1.0)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(out, "wb") as fh:
            sf.write(fh, y, sample_rate, format="FLAC")
    except Exception as exc:  # one bad recording never stops the corpus; reported by the caller
        return copy.path, f"{type(exc).__name__}: {exc}"
    return copy.path, None


def degrade_corpus(
    manifest: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    copies_per_work: int = 2,
    *,
    seed: int = 0,
    sample_rate: int = 16000,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``copies_per_work`` degraded copies of each work of ``manifest`` (relative paths are
    relative to its folder) under ``out_dir``, their manifest ``out_dir/manifest.csv`` (paths
    relative to it) and ``out_dir/copies.csv`` (path, source, chain); returns the manifest's path.
    Copies already on disk are kept, so an interrupted run resumes. Recordings that cannot be read
    or degraded are logged and left out.
    """
    from csi_runtime.atomic import atomic_write_text

    manifest = Path(manifest)
    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{manifest} lists no recordings")
    plan = plan_copies(rows, copies_per_work, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(c, str(manifest.parent), str(out), sample_rate) for c in plan]
    failed: dict[str, str] = {}
    done = 0
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for path, error in pool.map(_make, jobs, chunksize=8):
                done += 1
                if error:
                    failed[path] = error
                if progress:
                    progress(done, len(jobs))
    else:
        for job in jobs:
            path, error = _make(job)
            done += 1
            if error:
                failed[path] = error
            if progress:
                progress(done, len(jobs))
    for path, error in list(failed.items())[:20]:
        logger.warning("degraded copy %s skipped: %s", path, error)
    if failed:
        logger.warning("%d of %d degraded copies skipped", len(failed), len(plan))
    made = [c for c in plan if c.path not in failed]
    manifest_text, copies_text = io.StringIO(), io.StringIO()
    manifest_rows = csv.writer(manifest_text, lineterminator="\n")
    copies_rows = csv.writer(copies_text, lineterminator="\n")
    manifest_rows.writerow(["path", "work_id", "version_id"])
    copies_rows.writerow(["path", "source", "chain"])
    for c in made:
        manifest_rows.writerow([c.path, c.work_id, c.version_id])
        copies_rows.writerow([c.path, c.source, "+".join(c.chain)])
    atomic_write_text(out / "copies.csv", copies_text.getvalue())
    target = out / "manifest.csv"
    atomic_write_text(target, manifest_text.getvalue())
    return target

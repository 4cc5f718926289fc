"""``csi demo``: the product at work on music the packaged model never saw.

1. **Catalog**: ``n_catalog`` held-out works (the test works of the rendered baseline's split,
   packaged in ``demo_works.npz``); one reference version of each (the original arrangement, up
   to ``REFERENCE_MAX_S``) is rendered with the numpy synthesiser and indexed window by window
   as ``csi index build`` does (a quarter window apart, windows of 0.7, 1 and 1.4 model windows).
2. **Stream**: a broadcast-like programme at 16 kHz: covers of catalog works (other versions:
   key, tempo, instruments, structure and mix differ) as 20-40 s excerpts, music that is not in
   the catalog, speech-like babble between items, and broadcast degradations
   (``csi_training.render.broadcast``: noise, EQ, MP3 at 64 kbit/s, a speed change, a voice
   talking over the music, a pitch shift, compression). The truth of every item is kept.
3. **Threshold**: calibrated for the monitor's *detections* (``csi calibrate --per detection``:
   one score per item, :func:`csi_runtime.calibrate.detection_score`) at a 2 % target of false
   detections per unknown-music item, on a separate set: excerpts of third versions of the
   catalog works, and unknown works cut into excerpt-long pieces, each framed by talk and
   degraded as the stream's items are; never the stream's own items. Window scores are
   impostor-normalised with the bundle's impostor set (``csi_runtime.impostors``; windows of
   training works) when it has one, else normalised by the catalog cohort (``--no-impostors``).
4. **Monitor**: ``Monitor`` runs over the stream in 1 s chunks with the ``csi monitor`` defaults;
   its detections are scored against the truth (precision, recall, timing error) and a report
   folder is written (JSON, CSV, PNG plots).

Regenerating the packaged works: ``python -m csi_training.demo build-works NOTES.npz`` (see
:func:`build_demo_works`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_OUT_DIR",
    "DEMO_WORKS_PATH",
    "ScoredDetection",
    "StreamItem",
    "build_demo_works",
    "format_summary",
    "register",
    "run_demo",
    "score_detections",
]

logger = logging.getLogger(__name__)

DEMO_WORKS_PATH = Path(__file__).with_name("demo_works.npz")
DEFAULT_OUT_DIR = "csi-demo-report"

# The rendered baseline's split (experiments/rendered_baseline.py, the recipe of the default model):
# the first 1,400 works of data/rendered_baseline_notes.npz, 200 held out by a seeded hash.
BASELINE_MAX_WORKS = 1400
BASELINE_TEST_WORKS = 200
BASELINE_SPLIT_SEED = 0
DEMO_WORKS_COUNT = 60

SAMPLE_RATE = 16000  # Hz, the default model's rate
REFERENCE_MAX_S = 60.0  # reference recordings: the whole version, up to this long
VERSION_MAX_S = 120.0  # covers and unknown music are rendered up to this long, then excerpted
EXCERPT_S = (20.0, 40.0)  # length of a broadcast excerpt, seconds (uniform)
SPEECH_GAP_S = (3.0, 8.0)  # babble between items, seconds (uniform)
MUSIC_DBFS = -20.0  # RMS level of music items
SPEECH_DBFS = -22.0  # RMS level of talk between items
FADE_S = 0.05  # fade in/out of each item (no clicks at the joins)
CHUNK_S = 1.0  # the monitor is fed this much audio at a time
TARGET_FAR = 0.02  # false detections per unknown-music item allowed by the calibrated threshold
#: versions of each unknown calibration work that are cut into pieces (negatives of the threshold)
CALIBRATION_UNKNOWN_VERSIONS = (0, 2)
# window hop of the monitor: a quarter window, like the references, so that a 20-40 s excerpt
# (which may start anywhere) holds at least MIN_WINDOWS whole windows far more often (12 of the
# stream's 18 covers at a 5 s hop, 6 at the model's default 10 s)
MONITOR_HOP_S = 5.0
SIMILARITY_HOP_S = 2.5  # window hop of the similarity-matrix plot
SEARCH_K = 10  # works ranked per window (the csi monitor default)
MIN_WINDOWS = 2  # the csi monitor defaults
MAX_GAP_WINDOWS = 2
START_UTC = "2026-01-01T00:00:00Z"  # stream second 0 (a fixed date: the report is reproducible)
CHANNEL = "demo"

#: broadcast degradations (csi_training.render.broadcast), drawn in turn for the stream's music
#: items; "mp3" needs ffmpeg: without it the codec stand-in "codec_approx" takes its place (logged,
#: and the truth names the one used)
DEGRADATIONS = ("clean", "noise", "eq", "mp3", "speed", "voice_over", "pitch", "compression")

# Cover versions of a catalog work: version 0 is the reference (the original arrangement),
# version 1 plays in the stream, version 2 calibrates the threshold.
REFERENCE_VERSION, STREAM_VERSION, CALIBRATION_VERSION = 0, 1, 2

ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class StreamItem:
    """One item of the demo stream. kind: "cover" (a version of a catalog work), "unknown" (music
    that is not in the catalog) or "speech"; start_s/end_s: stream seconds; work_id: "" for speech;
    version: the rendered version index (-1 for speech); degradation: one of DEGRADATIONS."""

    kind: str
    work_id: str
    start_s: float
    end_s: float
    version: int
    degradation: str


@dataclass(frozen=True)
class ScoredDetection:
    """A monitor detection in stream seconds, with its verdict against the truth."""

    work_id: str
    start_s: float
    end_s: float
    score: float
    peak_score: float
    n_windows: int
    correct: bool


# ----------------------------------------------------------------------------------------------
# The packaged works


def build_demo_works(
    notes_path: str | Path,
    out_path: str | Path = DEMO_WORKS_PATH,
    n_works: int = DEMO_WORKS_COUNT,
) -> list[str]:
    """Write the demo's works: the first ``n_works`` (in corpus order) of the rendered baseline's
    TEST works, reproduced exactly as experiments/rendered_baseline.py splits them (first
    BASELINE_MAX_WORKS works of ``notes_path``, BASELINE_TEST_WORKS held out, seed 0).
    Returns their work ids."""
    from csi_training.batching import split_works
    from csi_training.render.notes import load_note_corpus, save_note_corpus

    works = load_note_corpus(notes_path)[:BASELINE_MAX_WORKS]
    if len(works) < BASELINE_MAX_WORKS:
        raise ValueError(
            f"{notes_path} holds {len(works)} works; the baseline split needs {BASELINE_MAX_WORKS}"
        )
    split = split_works([w.work_id for w in works], val=0, test=BASELINE_TEST_WORKS, seed=BASELINE_SPLIT_SEED)
    test = [w for w in works if w.work_id in split.test][:n_works]
    extra = {
        "purpose": "csi demo: works held out from the default model's training",
        "split": {
            "notes": Path(notes_path).name,
            "max_works": BASELINE_MAX_WORKS,
            "test_works": BASELINE_TEST_WORKS,
            "seed": BASELINE_SPLIT_SEED,
        },
    }
    save_note_corpus(out_path, test, extra=extra)
    return [w.work_id for w in test]


# ----------------------------------------------------------------------------------------------
# Audio


def _normalize(x: np.ndarray, dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return x if rms == 0 else (x * (10.0 ** (dbfs / 20.0) / rms)).astype(np.float32)


def _fade(x: np.ndarray) -> np.ndarray:
    n = min(int(FADE_S * SAMPLE_RATE), len(x) // 2)
    if n > 0:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        x = x.copy()
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def _babble(seconds: float, rng: np.random.Generator) -> np.ndarray:
    from csi_training.render.effects import make_noise

    return _normalize(make_noise("babble", int(seconds * SAMPLE_RATE), SAMPLE_RATE, rng), SPEECH_DBFS)


def _degradation_cycle() -> tuple[str, ...]:
    """DEGRADATIONS, with "codec_approx" for "mp3" when ffmpeg is not on PATH."""
    from csi_training.render.effects import FFmpegError, find_ffmpeg

    try:
        find_ffmpeg()
    except FFmpegError as exc:
        logger.warning("%s: the stream's codec items use the codec stand-in (codec_approx)", exc)
        return tuple("codec_approx" if d == "mp3" else d for d in DEGRADATIONS)
    return DEGRADATIONS


def _render(work: Any, version: int, seed: int, max_s: float) -> np.ndarray:
    from csi_training.render.corpus import render_version
    from csi_training.render.versions import make_versions

    params = make_versions(work, version + 1, seed=seed)[version]
    return render_version(work, params, "synth", SAMPLE_RATE, max_duration_s=max_s, offline=False)


def _pieces(x: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """x cut into consecutive excerpt-long pieces (EXCERPT_S); a last piece shorter than the
    shortest excerpt joins the one before it."""
    pieces, start = [], 0
    while start < len(x):
        n = int(rng.uniform(*EXCERPT_S) * SAMPLE_RATE)
        if len(x) - (start + n) < EXCERPT_S[0] * SAMPLE_RATE:
            n = len(x) - start
        pieces.append(x[start : start + n])
        start += n
    return pieces


def _excerpt(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = min(len(x), int(rng.uniform(*EXCERPT_S) * SAMPLE_RATE))
    start = int(rng.integers(0, len(x) - n + 1))
    return x[start : start + n]


# ----------------------------------------------------------------------------------------------
# Scoring


def score_detections(
    detections: Sequence[tuple[str, float, float, float, float, int]], truth: Sequence[StreamItem]
) -> tuple[list[ScoredDetection], dict[str, Any]]:
    """Detections (work_id, start_s, end_s, score, peak_score, n_windows) scored against the truth.

    A detection is correct when a cover item of the same work overlaps it in time. precision =
    correct / detections (None without detections); recall = cover items overlapped by a correct
    detection / cover items (None without covers). Timing error of a detected item: |start - truth
    start| and |end - truth end| of the correct detection overlapping it most, averaged over items.
    """
    covers = [t for t in truth if t.kind == "cover"]

    def overlap(a0: float, a1: float, b0: float, b1: float) -> float:
        return min(a1, b1) - max(a0, b0)

    scored = []
    for work_id, s0, s1, score, peak, n_windows in detections:
        correct = any(t.work_id == work_id and overlap(s0, s1, t.start_s, t.end_s) > 0 for t in covers)
        scored.append(
            ScoredDetection(
                str(work_id), float(s0), float(s1), float(score), float(peak), int(n_windows), correct
            )
        )
    start_err: list[float] = []
    end_err: list[float] = []
    per_degradation: dict[str, dict[str, int]] = {}
    detected = 0
    for t in covers:
        hits = [
            d
            for d in scored
            if d.work_id == t.work_id and overlap(d.start_s, d.end_s, t.start_s, t.end_s) > 0
        ]
        row = per_degradation.setdefault(t.degradation, {"covers": 0, "detected": 0})
        row["covers"] += 1
        if hits:
            best = max(hits, key=lambda d: overlap(d.start_s, d.end_s, t.start_s, t.end_s))
            detected += 1
            row["detected"] += 1
            start_err.append(abs(best.start_s - t.start_s))
            end_err.append(abs(best.end_s - t.end_s))
    n_correct = sum(d.correct for d in scored)
    false_by_kind = {"unknown": 0, "speech": 0, "cover_other_work": 0}
    for d in scored:
        if d.correct:
            continue
        covering = [t for t in truth if overlap(d.start_s, d.end_s, t.start_s, t.end_s) > 0]
        main = max(covering, key=lambda t: overlap(d.start_s, d.end_s, t.start_s, t.end_s), default=None)
        kind = "speech" if main is None else ("cover_other_work" if main.kind == "cover" else main.kind)
        false_by_kind[kind] += 1
    metrics = {
        "items": len(truth),
        "cover_items": len(covers),
        "unknown_items": sum(t.kind == "unknown" for t in truth),
        "speech_items": sum(t.kind == "speech" for t in truth),
        "detections": len(scored),
        "correct_detections": n_correct,
        "false_detections": len(scored) - n_correct,
        "false_detections_by_content": false_by_kind,
        "detected_covers": detected,
        "precision": n_correct / len(scored) if scored else None,
        "recall": detected / len(covers) if covers else None,
        "timing_error_start_s": float(np.mean(start_err)) if start_err else None,
        "timing_error_end_s": float(np.mean(end_err)) if end_err else None,
        "timing_error_s": float(np.mean(start_err + end_err)) if start_err else None,
        "recall_by_degradation": {
            k: {**v, "recall": v["detected"] / v["covers"]} for k, v in sorted(per_degradation.items())
        },
    }
    return scored, metrics


def format_summary(metrics: dict[str, Any]) -> str:
    """The summary table ``csi demo`` prints."""

    def fmt(v: Any, spec: str = ".3f") -> str:
        return "n/a" if v is None else format(v, spec)

    cal = metrics["calibration"]
    rows = [
        ("catalog works", str(metrics["catalog_works"])),
        (
            "stream",
            f"{metrics['stream_s'] / 60:.1f} min, {metrics['items']} items "
            f"({metrics['cover_items']} covers, {metrics['unknown_items']} unknown music, "
            f"{metrics['speech_items']} speech)",
        ),
        (
            "threshold",
            f"{cal['threshold']:.4f} (false detections {cal['far']:.3f} at target {cal['target_far']}, "
            f"missed versions {cal['frr']:.3f} on the calibration items)",
        ),
        ("detections", f"{metrics['detections']} ({metrics['correct_detections']} correct)"),
        ("precision", fmt(metrics["precision"])),
        (
            "recall",
            f"{fmt(metrics['recall'])} ({metrics['detected_covers']} of {metrics['cover_items']} covers)",
        ),
        (
            "timing error",
            f"start {fmt(metrics['timing_error_start_s'], '.1f')} s, "
            f"end {fmt(metrics['timing_error_end_s'], '.1f')} s",
        ),
        ("wall time", f"{metrics['wall_s']:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append(
        "recall by degradation: "
        + ", ".join(f"{k} {v['detected']}/{v['covers']}" for k, v in metrics["recall_by_degradation"].items())
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Report files


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from csi_runtime.atomic import atomic_write_text

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _save_figure(fig: Any, path: Path) -> None:
    from csi_runtime.atomic import atomic_open

    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)


def _plot_timeline(truth: Sequence[StreamItem], scored: Sequence[ScoredDetection], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"cover": "tab:blue", "unknown": "tab:gray", "speech": "wheat"}
    fig, ax = plt.subplots(figsize=(14, 3.2))
    for t in truth:
        ax.broken_barh([(t.start_s / 60, (t.end_s - t.start_s) / 60)], (1.1, 0.8), color=colours[t.kind])
        if t.kind == "cover":
            ax.text(
                (t.start_s + t.end_s) / 120,
                1.5,
                t.work_id.split(":")[-1][:10],
                fontsize=5,
                ha="center",
                va="center",
                rotation=90,
                color="white",
            )
    for d in scored:
        ax.broken_barh(
            [(d.start_s / 60, (d.end_s - d.start_s) / 60)],
            (0.1, 0.8),
            color="tab:green" if d.correct else "tab:red",
        )
    ax.set_yticks([0.5, 1.5], ["detections", "truth"])
    ax.set_xlabel("stream minutes")
    ax.set_title(
        "truth (blue: cover of a catalog work, grey: unknown music, beige: speech) vs "
        "detections (green: correct, red: false)",
        fontsize=9,
    )
    ax.set_xlim(0, max([t.end_s for t in truth] + [d.end_s for d in scored]) / 60)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def _plot_similarity(matrix: np.ndarray, query_hop: float, ref_hop: float, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    image = ax.imshow(
        matrix,
        origin="lower",
        aspect="auto",
        cmap="magma",
        extent=(0, matrix.shape[1] * ref_hop, 0, matrix.shape[0] * query_hop),
    )
    fig.colorbar(image, ax=ax, label="cosine similarity")
    ax.set_xlabel("reference window start (s)")
    ax.set_ylabel("broadcast excerpt window start (s)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# The demo


def _prepare_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"demo report folder is a file: {out_dir}")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise FileExistsError(f"{out_dir} is not empty (use --force to write over its report)")
        shutil.rmtree(out_dir / "monitor", ignore_errors=True)  # the sink appends: start it afresh
    out_dir.mkdir(parents=True, exist_ok=True)


class _CollectingSink:
    """Forwards to a DetectionSink and keeps the detections."""

    def __init__(self, sink: Any) -> None:
        self.sink, self.detections = sink, []  # type: ignore[var-annotated]

    def write(self, detection: Any) -> None:
        self.sink.write(detection)
        self.detections.append(detection)

    def write_gap(self, gap: Any) -> None:
        self.sink.write_gap(gap)


def run_demo(
    out_dir: str | Path = DEFAULT_OUT_DIR,
    seed: int = 0,
    n_catalog: int = 30,
    *,
    n_covers: int | None = None,
    n_unknown: int | None = None,
    n_calibration_unknown: int | None = None,
    works_path: str | Path | None = None,
    force: bool = False,
    save_audio: bool = True,
    threads: int | None = None,
    target_far: float = TARGET_FAR,
    model: str | Path | None = None,
    impostors: bool | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Run the demo and write its report under ``out_dir``; returns the metrics (metrics.json).

    n_catalog: works in the catalog. n_covers: cover items in the stream (default 60 % of the
    catalog, each a different work); n_unknown: unknown-music items (default n_catalog // 5, at
    least 2); n_calibration_unknown: unknown works of the calibration set (default: the rest of
    the packaged works, at most max(12, n_catalog)). progress(stage, done, total) is called as
    the demo goes. target_far: false detections allowed per unknown-music item of the calibration
    set (it needs 1 / target_far such items). model: a model bundle folder (default: the packaged
    model); its works must not include the demo's (they are the rendered baseline's test works).
    impostors: impostor-normalised scores (``csi_runtime.impostors``; None: when the bundle has an
    impostor set), else scores normalised by the catalog cohort (``COHORT_WORKS``).
    Raises FileExistsError for a non-empty out_dir
    unless force.
    """
    from csi_runtime.calibrate import (
        calibrate_threshold,
        default_cohort,
        detection_score,
        min_negatives,
        search_k,
        spread_over_windows,
    )
    from csi_runtime.catalog import add_recording
    from csi_runtime.embedder import Embedder
    from csi_runtime.impostors import required_impostors
    from csi_runtime.index import ReferenceIndex
    from csi_runtime.monitor import Monitor, run_monitor
    from csi_runtime.sink import DetectionSink
    from csi_training.render.broadcast import degrade
    from csi_training.render.notes import load_note_corpus

    t_start = time.monotonic()
    out = Path(out_dir)
    n_covers = round(0.6 * n_catalog) if n_covers is None else n_covers
    n_unknown = max(2, n_catalog // 5) if n_unknown is None else n_unknown
    if n_catalog < 1 or not 1 <= n_covers <= n_catalog or n_unknown < 0:
        raise ValueError(
            f"need n_catalog >= 1, 1 <= n_covers <= n_catalog, n_unknown >= 0 "
            f"(got {n_catalog}, {n_covers}, {n_unknown})"
        )
    works = load_note_corpus(works_path or DEMO_WORKS_PATH)
    rest = len(works) - n_catalog - n_unknown
    n_cal = min(rest, max(12, n_catalog)) if n_calibration_unknown is None else n_calibration_unknown
    if n_cal < 1 or n_cal > rest:
        raise ValueError(
            f"{len(works)} demo works cannot give {n_catalog} catalog + {n_unknown} unknown "
            f"+ {n_cal} calibration works"
        )
    _prepare_out_dir(out, force)

    def report(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(stage, done, total)

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(works))
    catalog = [works[i] for i in order[:n_catalog]]
    unknown = [works[i] for i in order[n_catalog : n_catalog + n_unknown]]
    cal_unknown = [works[i] for i in order[n_catalog + n_unknown : n_catalog + n_unknown + n_cal]]
    embedder = Embedder(model, threads=threads)
    degradations = _degradation_cycle()
    # scores: impostor-normalised (csi_runtime.impostors), else normalised by the catalog cohort
    impostor_set = (
        embedder.impostors if impostors is None else required_impostors(embedder) if impostors else None
    )
    cohort = default_cohort(impostor_set is not None)

    # 1. catalog
    index = ReferenceIndex(embedder.dim, model_id=embedder.model_id)
    ref_hop = embedder.window_s / 4
    for i, work in enumerate(catalog):
        audio = _render(work, REFERENCE_VERSION, seed, REFERENCE_MAX_S)
        meta = {"title": work.title, "version_id": f"v{REFERENCE_VERSION:02d}"}
        add_recording(embedder, index, work.work_id, audio, SAMPLE_RATE, metadata=meta, hop_s=ref_hop)
        report("catalog", i + 1, n_catalog)
    logger.info("catalog: %d works, %d reference windows", n_catalog, len(index))

    # 2. calibration, of detections (not windows): other versions of catalog works vs unknown works,
    # cut and framed by talk as the stream's items are (none of them the stream's own items)
    pos_scores: list[float] = []
    neg_scores: list[float] = []
    cal_rng = np.random.default_rng([seed, 1])
    cal_items = [(w, True, CALIBRATION_VERSION) for w in catalog] + [
        (w, False, v) for w in cal_unknown for v in CALIBRATION_UNKNOWN_VERSIONS
    ]
    for i, (work, positive, version) in enumerate(cal_items):
        audio = _render(work, version, seed, VERSION_MAX_S)
        items = [_excerpt(audio, cal_rng)] if positive else _pieces(audio, cal_rng)
        for piece in items:
            piece = degrade(piece, degradations[i % len(degradations)], cal_rng, SAMPLE_RATE, MUSIC_DBFS)
            talk = [_babble(cal_rng.uniform(*SPEECH_GAP_S), cal_rng) for _ in range(2)]
            framed = np.concatenate([talk[0], _fade(piece), talk[1]])
            segs = embedder.embed_segments(framed, SAMPLE_RATE, hop_s=MONITOR_HOP_S)
            vectors = segs.vectors[~segs.silent]
            found = index.search(vectors, k=search_k(SEARCH_K, cohort), threads=1) if len(vectors) else []
            if impostor_set is not None and found:
                found = impostor_set.rescore(found, vectors, threads=1)
            score = detection_score(
                spread_over_windows(found, segs.silent),
                work.work_id if positive else None,
                cohort,
                MIN_WINDOWS,
                MAX_GAP_WINDOWS,
            )
            (pos_scores if positive else neg_scores).append(score)
        report("calibration", i + 1, len(cal_items))
    if len(neg_scores) < min_negatives(target_far):
        raise ValueError(
            f"the calibration set gave {len(neg_scores)} unknown-music items; a {target_far} "
            f"false-detection target needs {min_negatives(target_far)} (use more unknown works)"
        )
    calibration = calibrate_threshold(np.array(pos_scores), np.array(neg_scores), target_far=target_far)
    logger.info(
        "threshold %.4f (false detections %.3f, missed versions %.3f)",
        calibration.threshold,
        calibration.far,
        calibration.frr,
    )

    # 3. the stream
    stream_rng = np.random.default_rng([seed, 2])
    cover_works = [catalog[i] for i in stream_rng.permutation(n_catalog)[:n_covers]]
    music = [("cover", w) for w in cover_works] + [("unknown", w) for w in unknown]
    music = [music[i] for i in stream_rng.permutation(len(music))]
    pieces: list[np.ndarray] = []
    truth: list[StreamItem] = []
    position = 0

    def append(kind: str, work_id: str, x: np.ndarray, version: int, degradation: str) -> None:
        nonlocal position
        x = _fade(x)
        pieces.append(x)
        truth.append(
            StreamItem(
                kind, work_id, position / SAMPLE_RATE, (position + len(x)) / SAMPLE_RATE, version, degradation
            )
        )
        position += len(x)

    for i, (kind, work) in enumerate(music):
        append("speech", "", _babble(stream_rng.uniform(*SPEECH_GAP_S), stream_rng), -1, "clean")
        version = STREAM_VERSION if kind == "cover" else int(stream_rng.integers(0, 3))
        degradation = degradations[i % len(degradations)]
        excerpt = _excerpt(_render(work, version, seed, VERSION_MAX_S), stream_rng)
        degraded = degrade(excerpt, degradation, stream_rng, SAMPLE_RATE, MUSIC_DBFS)
        append(kind, work.work_id, degraded, version, degradation)
        report("stream", i + 1, len(music))
    append("speech", "", _babble(stream_rng.uniform(*SPEECH_GAP_S), stream_rng), -1, "clean")
    stream = np.clip(np.concatenate(pieces), -1.0, 1.0).astype(np.float32)
    stream_s = len(stream) / SAMPLE_RATE

    # 4. the monitor
    sink = DetectionSink(out / "monitor", plots=True)
    collecting = _CollectingSink(sink)
    monitor = Monitor(
        embedder,
        index,
        channel=CHANNEL,
        threshold=calibration.threshold,
        k=SEARCH_K,
        cohort=cohort,
        impostors=impostor_set,
        hop_s=MONITOR_HOP_S,
        min_windows=MIN_WINDOWS,
        max_gap_windows=MAX_GAP_WINDOWS,
        start_utc=START_UTC,
        sink=collecting,
        search_threads=1,
    )
    chunk = int(CHUNK_S * SAMPLE_RATE)
    n_chunks = math.ceil(len(stream) / chunk)

    def chunks() -> Iterator[np.ndarray]:
        for k in range(n_chunks):
            yield stream[k * chunk : (k + 1) * chunk]

    t_monitor = time.monotonic()
    try:
        run_monitor(
            chunks(), monitor, progress=lambda m: report("monitor", round(m.position_s), round(stream_s))
        )
    finally:
        sink.close()
    monitor_s = time.monotonic() - t_monitor

    # 5. scoring and the report
    raw = [
        (
            str(d.work_id),
            float(d.query_offset_s),
            float(d.query_offset_s) + float(d.played_duration_s),
            float(d.score),
            float(d.peak_score),
            int(d.n_windows),
        )
        for d in collecting.detections
    ]
    scored, metrics = score_detections(raw, truth)
    _write_csv(
        out / "truth.csv",
        ["kind", "work_id", "start_s", "end_s", "version", "degradation"],
        [[t.kind, t.work_id, f"{t.start_s:.3f}", f"{t.end_s:.3f}", t.version, t.degradation] for t in truth],
    )
    _write_csv(
        out / "detections.csv",
        ["work_id", "start_s", "end_s", "score", "peak_score", "n_windows", "correct"],
        [
            [
                d.work_id,
                f"{d.start_s:.3f}",
                f"{d.end_s:.3f}",
                f"{d.score:.6f}",
                f"{d.peak_score:.6f}",
                d.n_windows,
                int(d.correct),
            ]
            for d in scored
        ],
    )
    from csi_runtime.atomic import atomic_write_text

    atomic_write_text(out / "detections.jsonl", "".join(json.dumps(asdict(d)) + "\n" for d in scored))
    _plot_timeline(truth, scored, out / "timeline.png")
    similarity = _similarity_plot(embedder, stream, truth, scored, catalog, seed, out / "similarity.png")
    if save_audio:
        import soundfile as sf

        from csi_runtime.atomic import atomic_open

        with atomic_open(out / "stream.flac", "wb") as fh:
            sf.write(fh, stream, SAMPLE_RATE, format="FLAC")
    metrics = {
        "model_id": embedder.model_id,
        "backend": embedder.backend,
        "seed": seed,
        "catalog_works": n_catalog,
        "reference_windows": len(index),
        "stream_s": round(stream_s, 3),
        "calibration": {
            **calibration.to_dict(),
            "per": "detection",
            "unknown_works": n_cal,
            "cohort": cohort,
            "impostors": None if impostor_set is None else impostor_set.sha256,
        },
        "monitor": {
            "min_windows": MIN_WINDOWS,
            "max_gap_windows": MAX_GAP_WINDOWS,
            "chunk_s": CHUNK_S,
            "window_s": embedder.window_s,
            "hop_s": MONITOR_HOP_S,
            "seconds": round(monitor_s, 3),
            "real_time_factor": round(stream_s / max(monitor_s, 1e-9), 1),
        },
        **metrics,
        "similarity_pair": similarity,
        "wall_s": round(time.monotonic() - t_start, 3),
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def _similarity_plot(
    embedder: Any,
    stream: np.ndarray,
    truth: Sequence[StreamItem],
    scored: Sequence[ScoredDetection],
    catalog: Sequence[Any],
    seed: int,
    path: Path,
) -> dict[str, Any] | None:
    """Window × window cosine similarity of the best-scored detected cover and its reference."""
    best: tuple[float, StreamItem] | None = None
    for t in truth:
        if t.kind != "cover":
            continue
        for d in scored:
            overlaps = (
                d.correct and d.work_id == t.work_id and min(d.end_s, t.end_s) > max(d.start_s, t.start_s)
            )
            if overlaps and (best is None or d.score > best[0]):
                best = (d.score, t)
    if best is None:
        return None
    item = best[1]
    work = next(w for w in catalog if w.work_id == item.work_id)
    cover = stream[int(item.start_s * SAMPLE_RATE) : int(item.end_s * SAMPLE_RATE)]
    reference = _render(work, REFERENCE_VERSION, seed, REFERENCE_MAX_S)
    q = embedder.embed_segments(cover, SAMPLE_RATE, hop_s=SIMILARITY_HOP_S)
    r = embedder.embed_segments(reference, SAMPLE_RATE, hop_s=SIMILARITY_HOP_S)
    matrix = q.vectors @ r.vectors.T
    _plot_similarity(
        matrix,
        SIMILARITY_HOP_S,
        SIMILARITY_HOP_S,
        f"{item.work_id}: broadcast excerpt ({item.degradation}) vs reference",
        path,
    )
    return {
        "work_id": item.work_id,
        "stream_start_s": item.start_s,
        "stream_end_s": item.end_s,
        "degradation": item.degradation,
        "max_similarity": float(matrix.max()),
    }


# ----------------------------------------------------------------------------------------------
# Command line


def cmd_demo(args: argparse.Namespace) -> int:
    from csi_runtime.cli import console_logging

    console_logging("csi_training")
    shown: dict[str, int] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in shown:
            shown[stage] = 0
            print(f"{stage} …", file=sys.stderr, flush=True)
        if sys.stderr.isatty():
            sys.stderr.write(f"\r  {stage}: {done}/{total}")
            if done >= total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    try:
        metrics = run_demo(
            args.out,
            seed=args.seed,
            n_catalog=args.catalog_works,
            force=args.force,
            save_audio=not args.no_audio,
            model=args.model,
            impostors=False if args.no_impostors else None,
            progress=progress,
        )
    except (FileExistsError, NotADirectoryError, ValueError) as exc:
        raise SystemExit(f"csi demo: {exc}") from None
    print(format_summary(metrics))
    print(f"report: {Path(args.out).resolve()}")
    return 0


def register(sub: Any) -> None:
    """Add ``csi demo`` to the ``csi`` subcommand parser."""
    p = sub.add_parser(
        "demo",
        help="find covers of held-out works in a synthetic broadcast stream and score the detections",
        description="Builds a catalog from works the packaged model never saw, synthesises a broadcast-like "
        "stream (covers, unknown music, speech, degradations), runs the monitor over it and scores "
        "its detections against the truth. Offline, CPU only, a few minutes.",
    )
    p.add_argument("--out", default=DEFAULT_OUT_DIR, help=f"report folder (default: ./{DEFAULT_OUT_DIR})")
    p.add_argument("--seed", type=int, default=0, help="random seed of the catalog and stream (default 0)")
    p.add_argument("--catalog-works", type=int, default=30, help="works in the catalog (default 30)")
    p.add_argument("--force", action="store_true", help="write over the report in a non-empty --out")
    p.add_argument("--no-audio", action="store_true", help="do not save the stream as stream.flac")
    p.add_argument("--model", help="model bundle folder (csi export; default: the packaged model)")
    p.add_argument(
        "--no-impostors",
        action="store_true",
        help="score windows by their margin over the catalog cohort instead of the model's impostor set",
    )
    p.set_defaults(func=cmd_demo)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m csi_training.demo build-works NOTES.npz [--out PATH]``: regenerate demo_works.npz."""
    parser = argparse.ArgumentParser(prog="python -m csi_training.demo")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build-works", help="write the demo's held-out works (the baseline's test works)")
    p.add_argument("notes", help="the baseline's note corpus (data/rendered_baseline_notes.npz)")
    p.add_argument("--out", default=str(DEMO_WORKS_PATH))
    p.add_argument("--works", type=int, default=DEMO_WORKS_COUNT)
    args = parser.parse_args(argv)
    ids = build_demo_works(args.notes, args.out, args.works)
    print(f"wrote {len(ids)} works to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Robustness of a model bundle: what each version factor, broadcast degradation and excerpt length costs.

::

    python -m csi_training.experiments.robustness --bundle default --out docs/results/robustness.md

1. **Works**: the rendered baseline's held-out test works (the split of ``csi demo``: the first
   BASELINE_MAX_WORKS works of the note corpus, BASELINE_TEST_WORKS held out by a seeded hash;
   ``--works N`` takes the first N of them). They are dealt, by a seeded permutation, into
   catalog works, calibration unknowns and evaluation unknowns (UNKNOWN_SHARE each).
2. **Catalog**: one reference per catalog work, the work as written (version 0 of
   ``make_versions``), full length (up to ``--max-recording-s``), indexed window by window through
   ``csi_runtime.catalog.add_recording`` exactly as ``csi index build`` does (a quarter window
   apart, windows of 0.7, 1 and 1.4 model windows, float16 vectors, inner product).
3. **Threshold**: ``csi_runtime.calibrate`` at a TARGET_FAR false-alarm target, on windows of a
   disjoint set: excerpts of a third version of each catalog work (positives) and versions of the
   calibration unknowns (negatives), both under the broadcast degradations in turn.
4. **Queries**, for every catalog work and every evaluation unknown, under each condition:

   - *version factors*: the reference with exactly one factor group replaced by that of a sampled
     cover (FACTOR_FIELDS: key, tempo, performance, structure, instrumentation, mix), the other
     fields, the seed included, kept;
   - *broadcast*: the cover (version 1: every factor differs) clean and under each degradation
     of ``csi_training.render.broadcast``;
   - *excerpts*: 10, 20 and 30 s of the clean cover, and 20 s excerpts under a random chain of
     1-3 broadcast degradations.

   A query is cut into the model's windows (its window and hop: what the monitor sees) and each
   window is searched against the catalog. Works are ranked by their best window score over the
   query (the score a monitor compares with the threshold); top-1 and MAP (one reference per work:
   AP = 1 / rank of the true work, ties counted against it). At the threshold, with the monitor's
   rule (``calibrate.window_scores``: a window reports its top-1 work when its score passes), a
   catalog query is *detected* when a window reports its work, and raises a *wrong alarm* when a
   window reports another one; an unknown query raises a *false detection* when any window
   reports any work.
5. **Report**: a Markdown table and a JSON of the same numbers next to it (written atomically).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from csi_training.render.broadcast import CHAIN_LENGTH, CHAIN_ORDER, DEGRADATIONS

logger = logging.getLogger("csi_training.experiments.robustness")

__all__ = [
    "BROADCAST_CONDITIONS",
    "CHAIN_ORDER",
    "CONDITIONS",
    "EXCERPT_CONDITIONS",
    "FACTOR_FIELDS",
    "QueryOutcome",
    "condition_metrics",
    "factor_variant",
    "held_out_works",
    "main",
    "query_audio",
    "rank_of_work",
    "run_robustness",
    "work_scores",
]

SAMPLE_RATE = 16000  # Hz, the rate audio is rendered at (the embedder resamples if its model differs)
MAX_RECORDING_S = 120.0  # references and queries are rendered up to this long (seconds)
TARGET_FAR = 0.02  # false-alarm target of the calibrated threshold (share of negative windows)
CALIBRATION_HOP_S = 5.0  # window hop when scoring the calibration set, seconds
CALIBRATION_EXCERPT_S = (20.0, 40.0)  # length of the positive calibration excerpts (uniform), seconds
UNKNOWN_SHARE = 0.2  # of the works: calibration unknowns, and as many evaluation unknowns
MIN_UNKNOWN_WORKS = 2
DONOR_VERSIONS = 8  # versions 1..7 are tried, in order, as the source of a factor's values
REFERENCE_VERSION, COVER_VERSION, CALIBRATION_VERSION = 0, 1, 2
MUSIC_DBFS = -20.0  # level of every query and calibration item (RMS)
DEFAULT_NOTES = "data/rendered_baseline_notes.npz"

#: version factors: the VersionParams fields each one replaces (the others describe the version itself)
FACTOR_FIELDS: dict[str, tuple[str, ...]] = {
    "key": ("transpose",),
    "tempo": ("tempo_factor",),
    "performance": ("tempo_drift", "swing", "humanize_s", "melody_variation", "velocity_jitter", "accent"),
    "structure": ("structure",),
    "instrumentation": ("voices", "soundfont"),
    "mix": (
        "reverb_rt60_s",
        "reverb_wet",
        "eq_tilt_db",
        "noise",
        "noise_snr_db",
        "codec",
        "codec_kbps",
        "lowpass_hz",
        "loudness_dbfs",
        "start_offset_s",
    ),
}
IDENTITY_FIELDS = ("work_id", "version_index", "seed", "original")

#: broadcast conditions: the cover, clean and under each degradation
BROADCAST_CONDITIONS = DEGRADATIONS
#: excerpt conditions: (name, seconds, degraded)
EXCERPT_CONDITIONS = (("excerpt 10 s", 10.0, False), ("excerpt 20 s", 20.0, False),
                      ("excerpt 30 s", 30.0, False), ("broadcast 20 s", 20.0, True))  # fmt: skip
CONDITIONS: tuple[tuple[str, str], ...] = (
    *((f"factor: {f}", "version factor") for f in FACTOR_FIELDS),
    *((f"cover: {d}", "broadcast") for d in BROADCAST_CONDITIONS),
    *((name, "excerpt") for name, _, _ in EXCERPT_CONDITIONS),
)


# ----------------------------------------------------------------------------------------------
# Works and conditions


def held_out_works(notes_path: str | Path, n_works: int | None = None) -> list[Any]:
    """The rendered baseline's test works (``csi demo``'s split, BASELINE_* constants), in corpus
    order; the first n_works of them (all when None)."""
    from csi_training.batching import split_works
    from csi_training.demo import BASELINE_MAX_WORKS, BASELINE_SPLIT_SEED, BASELINE_TEST_WORKS
    from csi_training.render.notes import load_note_corpus

    works = load_note_corpus(notes_path)[:BASELINE_MAX_WORKS]
    if len(works) < BASELINE_MAX_WORKS:
        raise ValueError(
            f"{notes_path} holds {len(works)} works; the baseline split needs {BASELINE_MAX_WORKS}"
        )
    split = split_works([w.work_id for w in works], val=0, test=BASELINE_TEST_WORKS, seed=BASELINE_SPLIT_SEED)
    test = [w for w in works if w.work_id in split.test]
    if n_works is not None:
        if not 1 <= n_works <= len(test):
            raise ValueError(f"--works must be in 1..{len(test)}, got {n_works}")
        test = test[:n_works]
    return test


def factor_variant(reference: Any, donors: Sequence[Any], factor: str) -> Any | None:
    """The reference VersionParams with the fields of ``factor`` (FACTOR_FIELDS) taken from the
    first donor whose values differ; None when no donor differs."""
    fields = FACTOR_FIELDS[factor]
    for donor in donors:
        values = {f: getattr(donor, f) for f in fields}
        if any(values[f] != getattr(reference, f) for f in fields):
            return dataclasses.replace(reference, **values)
    return None


def _work_rng(seed: int, work_id: str, purpose: int) -> np.random.Generator:
    from csi_training.render.versions import stable_hash

    h = stable_hash(work_id)
    return np.random.default_rng([seed & 0xFFFFFFFF, h & 0xFFFFFFFF, h >> 32, purpose])


def _excerpt(x: np.ndarray, seconds: float, rng: np.random.Generator) -> np.ndarray:
    n = min(len(x), int(seconds * SAMPLE_RATE))
    start = int(rng.integers(0, len(x) - n + 1))
    return x[start : start + n]


def _render(work: Any, params: Any, max_s: float) -> np.ndarray:
    from csi_training.render.corpus import render_version

    return render_version(work, params, "synth", SAMPLE_RATE, max_duration_s=max_s, offline=False)


def query_audio(
    work: Any, seed: int, max_s: float, conditions: Iterable[str] | None = None
) -> dict[str, tuple[np.ndarray, str]]:
    """The query of each condition (CONDITIONS names) for one work: {name: (float32 [n] at
    SAMPLE_RATE, description)}. A factor no donor version changes is left out."""
    from csi_training.render.broadcast import degrade, degrade_chain, random_chain
    from csi_training.render.versions import make_versions

    wanted = {name for name, _ in CONDITIONS} if conditions is None else set(conditions)
    versions = make_versions(work, DONOR_VERSIONS, seed=seed)
    reference, donors = versions[REFERENCE_VERSION], versions[1:]
    out: dict[str, tuple[np.ndarray, str]] = {}
    for factor in FACTOR_FIELDS:
        name = f"factor: {factor}"
        if name not in wanted:
            continue
        variant = factor_variant(reference, donors, factor)
        if variant is None:
            logger.debug("%s: no version changes its %s", work.work_id, factor)
            continue
        changed = {
            f: getattr(variant, f)
            for f in FACTOR_FIELDS[factor]
            if getattr(variant, f) != getattr(reference, f)
        }
        out[name] = (_render(work, variant, max_s), _describe(changed))
    if not any(n.startswith("cover: ") or n in {e[0] for e in EXCERPT_CONDITIONS} for n in wanted):
        return out
    cover = _render(work, versions[COVER_VERSION], max_s)
    for kind in BROADCAST_CONDITIONS:
        name = f"cover: {kind}"
        if name in wanted:
            rng = _work_rng(seed, work.work_id, 10 + BROADCAST_CONDITIONS.index(kind))
            out[name] = (degrade(cover, kind, rng, SAMPLE_RATE, MUSIC_DBFS), kind)
    for k, (name, seconds, degraded) in enumerate(EXCERPT_CONDITIONS):
        if name not in wanted:
            continue
        rng = _work_rng(seed, work.work_id, 30 + k)
        x = _excerpt(cover, seconds, rng)
        description = "clean"
        if degraded:
            chain = random_chain(rng)
            x = degrade_chain(x, chain, rng, SAMPLE_RATE, MUSIC_DBFS)
            description = "+".join(chain)
        else:
            x = degrade(x, "clean", rng, SAMPLE_RATE, MUSIC_DBFS)
        out[name] = (x, description)
    return out


def _describe(changed: dict[str, Any]) -> str:
    parts = []
    for k, v in changed.items():
        if k == "voices":
            v = "/".join(f"{s.source}:{s.preset}" for s in v)
        parts.append(f"{k}={v}")
    return ", ".join(parts)


# ----------------------------------------------------------------------------------------------
# Scoring


def work_scores(hits_per_window: Sequence[Sequence[Any]]) -> dict[Any, float]:
    """Each work's best window score over a query: {work_id: max over windows of its score}, from
    ``ReferenceIndex.search`` output (one ranked hit list per window)."""
    best: dict[Any, float] = {}
    for hits in hits_per_window:
        for hit in hits:
            score = float(hit.score)
            if hit.work_id not in best or score > best[hit.work_id]:
                best[hit.work_id] = score
    return best


def rank_of_work(scores: dict[Any, float], work_id: Any, n_works: int) -> int:
    """1-based rank of work_id among n_works catalog works by score (larger first); ties count
    against it; a work without a score ranks last."""
    if work_id not in scores:
        return n_works
    mine = scores[work_id]
    return 1 + sum(1 for w, s in scores.items() if w != work_id and s >= mine)


@dataclasses.dataclass(frozen=True)
class QueryOutcome:
    """One query: condition; work_id; in_catalog; rank of its work among the catalog works (catalog
    queries, else 0); windows searched; alarm_windows: windows whose top-1 work passes the threshold;
    correct_windows: those whose top-1 is the query's own work; seconds: query duration."""

    condition: str
    work_id: str
    in_catalog: bool
    rank: int
    windows: int
    alarm_windows: int
    correct_windows: int
    seconds: float
    description: str = ""


def _outcome(
    condition: str,
    work_id: str,
    in_catalog: bool,
    hits: Sequence[Sequence[Any]],
    n_works: int,
    threshold: float,
    seconds: float,
    description: str = "",
    cohort: int = 0,
) -> QueryOutcome:
    from csi_runtime.calibrate import is_match, window_scores

    top = window_scores(hits, cohort=cohort)  # each window's top-1 score, whatever the work
    alarms = [bool(is_match(s, threshold)) for s in top]
    own = window_scores(hits, work_id, cohort)  # the monitor's score for the query's own work
    correct = sum(bool(is_match(s, threshold)) for s in own) if in_catalog else 0
    rank = rank_of_work(work_scores(hits), work_id, n_works) if in_catalog else 0
    return QueryOutcome(
        condition, work_id, in_catalog, rank, len(hits), sum(alarms), correct, seconds, description
    )


def condition_metrics(outcomes: Sequence[QueryOutcome]) -> dict[str, Any]:
    """Metrics of one condition's queries.

    Catalog queries: top1 (share ranked first), MAP (mean of 1 / rank: one relevant reference per
    work), detected (share with a window reporting their work at the threshold), wrong_alarms
    (share with a window reporting another work). Unknown queries: false_detections (share with
    any window reporting a work), false_alarm_windows (share of their windows that do). None where
    there are no queries of that kind.
    """
    known = [o for o in outcomes if o.in_catalog]
    unknown = [o for o in outcomes if not o.in_catalog]

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    unknown_windows = sum(o.windows for o in unknown)
    return {
        "queries": len(known),
        "seconds": mean([o.seconds for o in known]),
        "top1": mean([float(o.rank == 1) for o in known]),
        "MAP": mean([1.0 / o.rank for o in known]),
        "detected": mean([float(o.correct_windows > 0) for o in known]),
        "wrong_alarms": mean([float(o.alarm_windows > o.correct_windows) for o in known]),
        "unknown_queries": len(unknown),
        "false_detections": mean([float(o.alarm_windows > 0) for o in unknown]),
        "unknown_windows": unknown_windows,
        "false_alarm_windows": (
            sum(o.alarm_windows for o in unknown) / unknown_windows if unknown_windows else None
        ),
    }


# ----------------------------------------------------------------------------------------------
# The evaluation


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (ffmpeg), user + system, seconds."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _progress(iterable: Sequence[Any], desc: str, show: bool) -> Iterable[Any]:
    if not show:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


def run_robustness(
    bundle: str | Path | None = None,
    notes_path: str | Path = DEFAULT_NOTES,
    n_works: int | None = None,
    *,
    seed: int = 0,
    max_recording_s: float = MAX_RECORDING_S,
    threads: int = 1,
    conditions: Sequence[str] | None = None,
    target_far: float = TARGET_FAR,
    cohort: int | None = None,
    impostors: bool = False,
    progress: bool = True,
    on_query: Callable[[QueryOutcome], None] | None = None,
) -> dict[str, Any]:
    """Run the evaluation (module docstring) and return its results (what the JSON holds).

    bundle: a model bundle folder, or None for the packaged default model. n_works: held-out works
    used (default all BASELINE_TEST_WORKS). conditions: names of CONDITIONS to run (default all).
    threads: onnxruntime and search threads. target_far: false-alarm target of the threshold.
    impostors: normalise scores with the bundle's impostor set (``csi_runtime.impostors``, as
    ``csi calibrate --impostors``). cohort: of the monitor's normalised window score (None: 0 with
    impostors, else ``COHORT_WORKS``, as ``csi calibrate``).
    """
    from csi_runtime.calibrate import calibrate_threshold, default_cohort, min_negatives, window_scores
    from csi_runtime.catalog import REFERENCE_HOP_FRACTION, REFERENCE_WINDOW_SCALES, add_recording
    from csi_runtime.embedder import Embedder
    from csi_runtime.impostors import required_impostors
    from csi_runtime.index import ReferenceIndex
    from csi_training.render.broadcast import degrade
    from csi_training.render.corpus import RenderError
    from csi_training.render.versions import make_versions

    t_start, cpu_start = time.monotonic(), _cpu_seconds()
    known = {name for name, _ in CONDITIONS}
    selected = [name for name, _ in CONDITIONS] if conditions is None else list(conditions)
    bad = [c for c in selected if c not in known]
    if bad:
        raise ValueError(f"unknown conditions {bad}; expected some of: {', '.join(sorted(known))}")
    if not max_recording_s > 0:
        raise ValueError(f"max_recording_s must be > 0, got {max_recording_s}")
    from csi_training.render.effects import find_ffmpeg

    find_ffmpeg()  # the mp3 degradation (queries and calibration) is a real ffmpeg round trip
    works = held_out_works(notes_path, n_works)
    n_unknown = max(MIN_UNKNOWN_WORKS, round(UNKNOWN_SHARE * len(works)))
    if len(works) < 2 * n_unknown + 2:
        raise ValueError(f"{len(works)} works are too few: need at least {2 * n_unknown + 2}")
    order = np.random.default_rng(seed).permutation(len(works))
    catalog = [works[i] for i in order[: len(works) - 2 * n_unknown]]
    cal_unknown = [works[i] for i in order[len(works) - 2 * n_unknown : len(works) - n_unknown]]
    eval_unknown = [works[i] for i in order[len(works) - n_unknown :]]
    embedder = Embedder(bundle, threads=threads)
    impostor_set = required_impostors(embedder) if impostors else None
    if cohort is None:
        cohort = default_cohort(impostor_set is not None)
    logger.info(
        "model %s: %d catalog works, %d calibration unknowns, %d evaluation unknowns",
        embedder.model_id,
        len(catalog),
        len(cal_unknown),
        len(eval_unknown),
    )

    # 1. the catalog: full-length references, windowed as `csi index build` does
    index = ReferenceIndex(embedder.dim, dtype="float16", metric="ip", model_id=embedder.model_id)
    hop = embedder.window_s * REFERENCE_HOP_FRACTION
    reference_s = []
    for work in _progress(catalog, "catalog", progress):
        params = make_versions(work, 1, seed=seed)[REFERENCE_VERSION]
        audio = _render(work, params, max_recording_s)
        reference_s.append(len(audio) / SAMPLE_RATE)
        meta = {"title": work.title, "version_id": f"v{REFERENCE_VERSION:02d}"}
        add_recording(embedder, index, work.work_id, audio, SAMPLE_RATE, metadata=meta, hop_s=hop)
    n_catalog = index.num_works
    logger.info("catalog: %d works, %d windows", n_catalog, len(index))

    def search(audio: np.ndarray, hop_s: float | None = None) -> list[list[Any]]:
        segs = embedder.embed_segments(audio, SAMPLE_RATE, hop_s=hop_s)
        vectors = segs.vectors[~segs.silent]
        if not len(vectors):
            return []
        hits = index.search(vectors, k=n_catalog, threads=threads)
        if impostor_set is not None:
            hits = impostor_set.rescore(hits, vectors, threads=threads)
        return hits

    # 2. the threshold, on a disjoint calibration set
    from csi_training.render.broadcast import DEGRADATIONS

    cycle = [d for d in DEGRADATIONS if d != "codec_approx"]
    pos: list[float] = []
    neg: list[float] = []
    cal_items = [(w, CALIBRATION_VERSION, True) for w in catalog] + [
        (w, v, False) for w in cal_unknown for v in (REFERENCE_VERSION, COVER_VERSION, CALIBRATION_VERSION)
    ]
    for i, (work, version, positive) in enumerate(_progress(cal_items, "calibration", progress)):
        rng = _work_rng(seed, work.work_id, 100 + version)
        try:
            audio = _render(work, make_versions(work, version + 1, seed=seed)[version], max_recording_s)
        except (RenderError, ValueError) as exc:
            logger.warning("calibration: %s v%02d skipped: %s", work.work_id, version, exc)
            continue
        if positive:
            audio = _excerpt(audio, float(rng.uniform(*CALIBRATION_EXCERPT_S)), rng)
        audio = degrade(audio, cycle[i % len(cycle)], rng, SAMPLE_RATE, MUSIC_DBFS)
        hits = search(audio, CALIBRATION_HOP_S)
        if positive:
            pos += window_scores(hits, work.work_id, cohort)
        else:
            neg += window_scores(hits, cohort=cohort)
    if len(neg) < min_negatives(target_far) or not pos:
        raise ValueError(
            f"the calibration set gave {len(neg)} negative and {len(pos)} positive windows; a {target_far} "
            f"false-alarm target needs {min_negatives(target_far)} negatives (use more works)"
        )
    calibration = calibrate_threshold(np.array(pos), np.array(neg), target_far=target_far)
    logger.info(
        "threshold %.4f (far %.3f, frr %.3f)", calibration.threshold, calibration.far, calibration.frr
    )

    # 3. the queries
    outcomes: list[QueryOutcome] = []
    skipped: dict[str, int] = {}
    query_works = [(w, True) for w in catalog] + [(w, False) for w in eval_unknown]
    for work, in_catalog in _progress(query_works, "queries", progress):
        try:
            queries = query_audio(work, seed, max_recording_s, selected)
        except (RenderError, ValueError) as exc:
            logger.warning("queries of %s skipped: %s", work.work_id, exc)
            for name in selected:
                skipped[name] = skipped.get(name, 0) + 1
            continue
        for name in selected:
            if name not in queries:
                skipped[name] = skipped.get(name, 0) + 1
                continue
            audio, description = queries[name]
            outcome = _outcome(
                name,
                work.work_id,
                in_catalog,
                search(audio),
                n_catalog,
                calibration.threshold,
                len(audio) / SAMPLE_RATE,
                description,
                cohort,
            )
            outcomes.append(outcome)
            if on_query is not None:
                on_query(outcome)

    rows = []
    for name, group in CONDITIONS:
        if name in selected:
            rows.append(
                {
                    "condition": name,
                    "group": group,
                    **condition_metrics([o for o in outcomes if o.condition == name]),
                    "skipped": skipped.get(name, 0),
                }
            )
    return {
        "model_id": embedder.model_id,
        "backend": embedder.backend,
        "window_s": embedder.window_s,
        "hop_s": embedder.hop_s,
        "seed": seed,
        "works": {
            "held_out": len(works),
            "catalog": len(catalog),
            "calibration_unknown": len(cal_unknown),
            "evaluation_unknown": len(eval_unknown),
        },
        "catalog": {
            "windows": len(index),
            "reference_hop_s": hop,
            "reference_window_s": [round(embedder.window_s * x, 3) for x in REFERENCE_WINDOW_SCALES],
            "mean_reference_s": round(float(np.mean(reference_s)), 2) if reference_s else None,
            "dtype": "float16",
        },
        "max_recording_s": max_recording_s,
        "calibration": {
            **calibration.to_dict(),
            "hop_s": CALIBRATION_HOP_S,
            "cohort": cohort,
            "impostors": None if impostor_set is None else impostor_set.sha256,
        },
        "conditions": rows,
        "queries": [dataclasses.asdict(o) for o in outcomes],
        "wall_s": round(time.monotonic() - t_start, 1),
        "cpu_s": round(_cpu_seconds() - cpu_start, 1),
    }


# ----------------------------------------------------------------------------------------------
# Report


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def format_markdown(results: dict[str, Any], command: str) -> str:
    """The Markdown report of run_robustness's results."""
    w, cal = results["works"], results["calibration"]
    lines = [
        "<!-- written by python -m csi_training.experiments.robustness -->",
        "# Robustness",
        "",
        f"Command: `{command}`",
        "",
        f"Model `{results['model_id']}` ({results['backend']}; windows of {results['window_s']:g} s "
        f"every {results['hop_s']:g} s). Held-out works: {w['held_out']} (the rendered baseline's test "
        f"works): {w['catalog']} in the catalog (one full-length reference each, up to "
        f"{results['max_recording_s']:g} s, mean {_fmt(results['catalog']['mean_reference_s'], '.1f')} s; "
        f"{results['catalog']['windows']} windows"
        + (
            " of " + ", ".join(f"{x:g}" for x in sorted(results["catalog"]["reference_window_s"])) + " s"
            if results["catalog"].get("reference_window_s")
            else ""
        )
        + f" every {results['catalog']['reference_hop_s']:g} s), "
        f"{w['calibration_unknown']} unknown works for calibration, {w['evaluation_unknown']} other "
        "unknown works for the false-detection rates.",
        "",
        f"Threshold {cal['threshold']:.4f} (window score: "
        + ("impostor-normalised " if cal.get("impostors") else "")
        + (
            f"similarity minus the mean of the next {cal['cohort']} works'"
            if cal.get("cohort")
            else "similarity"
        )
        + f"), calibrated at a {cal['target_far']:g} false-alarm target on "
        f"{cal['n_neg']} unknown-music windows and {cal['n_pos']} cover windows (disjoint from the "
        f"queries): false alarms {cal['far']:.3f}, misses {cal['frr']:.3f} there.",
        "",
        "Top-1 and MAP: catalog works ranked by their best window score over the query (one reference "
        "per work, so MAP = mean reciprocal rank). Detected / wrong alarm: a window of the query "
        "reports its own / another work at the threshold (its top-1 work, score ≥ threshold). "
        "False detections: unknown-music queries (the same condition applied to works not in the "
        "catalog) with a window reporting any work; per window in the last column.",
        "",
        "| condition | queries | mean s | top-1 | MAP | detected | wrong alarm | unknown queries "
        "| false detections | false-alarm windows |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["conditions"]:
        lines.append(
            f"| {r['condition']} | {r['queries']} | {_fmt(r['seconds'], '.1f')} | {_fmt(r['top1'])} "
            f"| {_fmt(r['MAP'])} | {_fmt(r['detected'])} | {_fmt(r['wrong_alarms'])} "
            f"| {r['unknown_queries']} | {_fmt(r['false_detections'])} | {_fmt(r['false_alarm_windows'])} |"
        )
    lines += [
        "",
        "Version factors: the reference (the work as written) with one factor group taken from a "
        "sampled cover, the rest unchanged: "
        + "; ".join(f"{k}: {', '.join(v)}" for k, v in FACTOR_FIELDS.items())
        + ". Cover: version 1 (every factor differs), clean or under one broadcast degradation "
        "(csi_training.render.broadcast; mp3 = a real 64 kbit/s ffmpeg round trip, codec_approx = "
        "its stand-in). Excerpts: of the clean cover; broadcast 20 s: under a random chain of "
        f"{CHAIN_LENGTH[0]}-{CHAIN_LENGTH[1]} degradations. Renderer: the numpy synthesiser; a "
        "version's own codec uses the stand-in.",
        "",
        f"Wall time {results['wall_s']:.0f} s, CPU time {results['cpu_s']:.0f} s (this process and ffmpeg).",
        "",
    ]
    return "\n".join(lines)


def _json_text(results: dict[str, Any]) -> str:
    """JSON of the results, indented, with one line per query (thousands of them)."""
    head = {k: v for k, v in results.items() if k != "queries"}
    text = json.dumps(head, indent=1, allow_nan=False)
    rows = ",\n".join("  " + json.dumps(q, allow_nan=False) for q in results.get("queries", []))
    return text[: -len("\n}")] + ',\n "queries": [\n' + rows + "\n ]\n}\n"


def write_report(results: dict[str, Any], out: str | Path, command: str) -> tuple[Path, Path]:
    """Write the Markdown report to ``out`` and the JSON next to it (same stem), atomically."""
    from csi_runtime.atomic import atomic_write_text

    md = Path(out)
    md.parent.mkdir(parents=True, exist_ok=True)
    js = md.with_suffix(".json")
    atomic_write_text(js, _json_text({**results, "command": command}))
    atomic_write_text(md, format_markdown(results, command))
    return md, js


def main(argv: Sequence[str] | None = None) -> int:
    from csi_runtime.cli import console_logging
    from csi_training.render.effects import FFmpegError

    parser = argparse.ArgumentParser(
        prog="python -m csi_training.experiments.robustness",
        description="Top-1, MAP, detections and false detections of a model bundle under version "
        "factors, broadcast degradations and excerpts, on held-out works.",
    )
    parser.add_argument("--bundle", default="default", help="model bundle folder, or 'default' (packaged)")
    parser.add_argument(
        "--out", default="docs/results/robustness.md", help="Markdown report (JSON next to it)"
    )
    parser.add_argument("--notes", default=DEFAULT_NOTES, help=f"note corpus (default {DEFAULT_NOTES})")
    parser.add_argument(
        "--works", type=int, default=None, help="use the first N held-out works (default all 200)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-recording-s", type=float, default=MAX_RECORDING_S)
    parser.add_argument("--threads", type=int, default=1, help="inference and search threads (default 1)")
    parser.add_argument(
        "--conditions",
        nargs="+",
        default=None,
        metavar="NAME",
        help="run only these conditions (default all)",
    )
    parser.add_argument(
        "--target-far", type=float, default=TARGET_FAR, help=f"false-alarm target (default {TARGET_FAR})"
    )
    parser.add_argument(
        "--cohort",
        type=int,
        default=None,
        help="cohort of the normalised window score (default: 0 with impostors, else 4; 0: none)",
    )
    parser.add_argument(
        "--impostors",
        action="store_true",
        help="normalise scores with the bundle's impostor set (csi_runtime.impostors)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    console_logging("csi_training", args.verbose)
    command = "python -m csi_training.experiments.robustness " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    try:
        results = run_robustness(
            None if args.bundle == "default" else args.bundle,
            args.notes,
            args.works,
            seed=args.seed,
            max_recording_s=args.max_recording_s,
            threads=args.threads,
            conditions=args.conditions,
            target_far=args.target_far,
            cohort=args.cohort,
            impostors=args.impostors,
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError, FFmpegError) as exc:
        raise SystemExit(f"robustness: {exc}") from None
    md, js = write_report(results, args.out, command)
    logger.info("wrote %s and %s in %.0f s", md, js, results["wall_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

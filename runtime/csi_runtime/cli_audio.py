"""The ``csi`` subcommands that run the model on audio: identify, monitor, calibrate, and
``index build`` from audio files (``cli.py`` holds the others and the entry point).

    csi identify SONG.mp3 --index CAT.csi [-k 10] [--json]
    csi index build CATALOG_DIR|MANIFEST.csv -o CAT.csi [--update] [--remove WORK …]
    csi monitor SOURCE --index CAT.csi --out DIR [--channel NAME] [--threshold T | --calibration C.json]
    csi calibrate --index CAT.csi --positives P.csv --negatives DIR|N.csv [--far 0.01] [-o C.json]

SOURCE for monitor: an audio file, ``-`` for raw PCM on stdin (``--pcm-rate/--pcm-channels/
--pcm-format``), or a URL that ffmpeg reads (http, https, rtmp, srt, …; reconnects with back-off).
Every command takes ``--model BUNDLE`` (default: the packaged model), ``--backend`` and ``--device``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def _embedder(args: argparse.Namespace) -> Any:
    from csi_runtime.embedder import Embedder

    return Embedder(args.model, backend=args.backend, device=args.device, threads=args.threads)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model bundle folder (default: the packaged model)")
    p.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "tensorrt", "torch"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: the backend's)")


# -- index build from audio --------------------------------------------------------------------------


def cmd_index_build_audio(args: argparse.Namespace) -> int:
    from csi_runtime.catalog import add_to_index, indexed_paths, read_catalog
    from csi_runtime.cli import Progress
    from csi_runtime.index import ReferenceIndex

    out = Path(args.out)
    embedder = _embedder(args)
    if args.update or args.remove:
        if not out.exists():
            raise SystemExit(f"csi: --update/--remove need an existing index; {out} does not exist")
        index = ReferenceIndex.load(out)
        index.check_model(embedder.model_id, embedder.dim)
        if args.source:
            _check_same_impostors(index, embedder, out)
    else:
        if out.exists() and not args.force:
            raise SystemExit(f"csi: {out} exists; pass --update to add to it or --force to replace it")
        index = ReferenceIndex(embedder.dim, dtype=args.dtype, metric="ip", model_id=embedder.model_id)
    for work in args.remove or []:
        removed = index.remove(work)
        print(f"removed {work}: {removed} vectors" if removed else f"{work} was not in the index")
    added, skipped = 0, list[tuple[str, str]]()
    if args.source:
        entries = read_catalog(args.source)
        progress = Progress(len(entries), "embedding")
        try:
            added, skipped = add_to_index(
                embedder,
                index,
                entries,
                progress.advance,
                skip_paths=indexed_paths(index) if args.update else None,
                hop_s=args.hop_s,
                **({"window_scales": args.window_scales} if args.window_scales else {}),
            )
        finally:
            progress.close()
    index.save(out)
    for path, reason in skipped[:20]:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if len(skipped) > 20:
        print(f"… and {len(skipped) - 20} more skipped files", file=sys.stderr)
    print(
        f"wrote {out}: {added} recordings added, {len(skipped)} skipped; {index.num_works:,} works, "
        f"{len(index):,} windows, model {embedder.model_id}"
    )
    return 0


# -- identify ----------------------------------------------------------------------------------------


def rank_works(index: Any, vectors: np.ndarray, k: int) -> list[dict[str, Any]]:
    """Works ranked for a query made of several windows [S, D]: a work's score is the mean over the
    query's windows of its best similarity (0 where it is not in a window's top k); best first."""
    per_window = index.search(vectors, k=k)
    totals: dict[Any, float] = {}
    best: dict[Any, tuple[float, dict[str, Any]]] = {}
    for hits in per_window:
        for hit in hits:
            totals[hit.work_id] = totals.get(hit.work_id, 0.0) + float(hit.score)
            if hit.work_id not in best or hit.score > best[hit.work_id][0]:
                best[hit.work_id] = (float(hit.score), hit.metadata)
    n = max(1, len(per_window))
    ranked = sorted(totals, key=lambda w: (-totals[w], str(w)))[:k]
    return [
        {"work_id": w, "score": totals[w] / n, "best_window_score": best[w][0], "metadata": best[w][1]}
        for w in ranked
    ]


def cmd_identify(args: argparse.Namespace) -> int:
    from csi_runtime.index import ReferenceIndex

    embedder = _embedder(args)
    index = ReferenceIndex.load(args.index, mmap=True)
    index.check_model(embedder.model_id, embedder.dim)
    results: list[dict[str, Any]] = []
    for path in args.files:
        segments = embedder.embed_segments(path)
        vectors = segments.vectors[~segments.silent]
        ranked = rank_works(index, vectors, args.k) if len(vectors) else []
        results.append({"file": str(path), "windows": len(vectors), "matches": ranked})
    if args.json:
        json.dump(results if len(results) > 1 else results[0], sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    for r in results:
        print(f"{r['file']} ({r['windows']} windows):")
        if not r["matches"]:
            print("  (silent: nothing to identify)")
        for rank, m in enumerate(r["matches"], 1):
            meta = json.dumps({k: v for k, v in m["metadata"].items() if k != "start_s"}, ensure_ascii=False)
            print(
                f"  {rank:>3}. {m['work_id']!s:<28} {m['score']:.4f} "
                f"(best window {m['best_window_score']:.4f}) {meta}"
            )
    return 0


DEFAULT_MIN_WINDOWS = 2  # csi monitor / csi calibrate --per detection
DEFAULT_MAX_GAP_WINDOWS = 2


def _tracker_settings(args: argparse.Namespace) -> tuple[int, int]:
    """(min_windows, max_gap_windows): the options given, else the defaults."""
    return (
        DEFAULT_MIN_WINDOWS if args.min_windows is None else args.min_windows,
        DEFAULT_MAX_GAP_WINDOWS if args.max_gap_windows is None else args.max_gap_windows,
    )


def _check_same_impostors(index: Any, embedder: Any, path: Path) -> None:
    """Refuses to add windows with impostor means to an index whose windows have none, or the
    reverse: impostor-normalised scores need every window's mean (checked on the first window)."""
    from csi_runtime.impostors import index_has_means

    has_means = index_has_means(index)
    if has_means is not None and has_means != (embedder.impostors is not None):
        raise SystemExit(
            f"csi: {path} was built {'with' if has_means else 'without'} impostor means and model bundle "
            f"{embedder.bundle.path} {'has no' if has_means else 'has an'} impostor set; an index must be "
            "all one or the other (rebuild it with --force)"
        )


# -- calibrate ---------------------------------------------------------------------------------------


def cmd_calibrate(args: argparse.Namespace) -> int:
    from csi_runtime.calibrate import (
        calibrate_threshold,
        default_cohort,
        detection_score,
        search_k,
        spread_over_windows,
        window_scores,
    )
    from csi_runtime.catalog import read_catalog
    from csi_runtime.cli import Progress
    from csi_runtime.index import ReferenceIndex

    embedder = _embedder(args)
    index = ReferenceIndex.load(args.index, mmap=True)
    index.check_model(embedder.model_id, embedder.dim)
    impostors = _impostors(_use_impostors(args, embedder, index), embedder, index, args.index)
    if args.cohort is None:  # impostor-normalised scores measured best without a cohort on top
        args.cohort = default_cohort(impostors is not None)
    if args.cohort and index.num_works < args.cohort + 1:
        raise SystemExit(
            f"csi: a cohort of {args.cohort} works needs an index of at least {args.cohort + 1} works "
            f"({args.index} has {index.num_works}); pass --cohort 0 for raw similarities"
        )
    positives, negatives = read_catalog(args.positives), read_catalog(args.negatives)
    unknown = sorted({e.work_id for e in positives} - set(index.work_ids()))
    if unknown:
        raise SystemExit(f"csi: positives name works that are not in the index: {', '.join(unknown[:10])}")
    per_detection = args.per == "detection"
    min_windows, max_gap = _tracker_settings(args)
    pos_scores: list[float] = []
    neg_scores: list[float] = []
    windows = {"positive": 0, "negative": 0}
    progress = Progress(len(positives) + len(negatives), "scoring")
    try:
        for entries, is_positive in ((positives, True), (negatives, False)):
            for entry in entries:
                work = entry.work_id if is_positive else None
                segments = embedder.embed_segments(entry.path, window_s=args.window_s, hop_s=args.hop_s)
                vectors = segments.vectors[~segments.silent]
                found = index.search(vectors, k=search_k(args.k, args.cohort)) if len(vectors) else []
                if impostors is not None and found:
                    found = impostors.rescore(found, vectors)
                windows["positive" if is_positive else "negative"] += len(found)
                scores = pos_scores if is_positive else neg_scores
                if per_detection:  # one score per recording; silent windows support nothing
                    hits = spread_over_windows(found, segments.silent)
                    scores.append(detection_score(hits, work, args.cohort, min_windows, max_gap))
                elif found:
                    scores += window_scores(found, work, args.cohort)
                progress.advance(1)
    finally:
        progress.close()
    if not neg_scores or not pos_scores:
        raise SystemExit("csi: the positives or the negatives gave no audible window to score")
    try:
        calibration = calibrate_threshold(np.array(pos_scores), np.array(neg_scores), target_far=args.far)
    except ValueError as exc:
        unit = "negative recordings" if per_detection else "negative windows"
        raise SystemExit(f"csi: {exc} ({len(neg_scores)} {unit}; give more negatives)") from None
    report: dict[str, Any] = {**calibration.to_dict(), "per": args.per, "cohort": args.cohort,
                              "impostors": None if impostors is None else impostors.sha256,
                              "model_id": embedder.model_id, "index": str(args.index),
                              "window_s": args.window_s or embedder.window_s,
                              "hop_s": args.hop_s or embedder.hop_s, "windows": windows}  # fmt: skip
    if per_detection:
        report.update(min_windows=min_windows, max_gap_windows=max_gap,
                      recordings={"positive": len(pos_scores), "negative": len(neg_scores)})  # fmt: skip
    text = json.dumps(report, indent=2) + "\n"
    if args.out:
        from csi_runtime.atomic import atomic_write_text

        atomic_write_text(args.out, text)
    print(text, end="")
    return 0


def _use_impostors(args: argparse.Namespace, embedder: Any, index: Any) -> bool:
    """--impostors / --no-impostors as given; by default, impostor-normalised scores whenever they
    can be had (the bundle has an impostor set, the index carries its means) and no --cohort is asked
    for: with the whitened default model they detected more covers at the same false-alarm rate
    (demo 41 against 30 of 108) and raised fewer false detections (23 against 27 of 760)."""
    if args.impostors is not None:
        return bool(args.impostors)
    if args.cohort is not None:
        return False
    from csi_runtime.impostors import ImpostorError, index_has_means

    try:
        has_set = embedder.impostors is not None
    except ImpostorError as exc:
        raise SystemExit(f"csi: {exc} (or pass --no-impostors)") from None
    return has_set and bool(index_has_means(index))


def _impostors(wanted: bool, embedder: Any, index: Any, index_path: str) -> Any:
    """The bundle's impostor set when ``wanted`` (checked usable with the index), else None."""
    if not wanted:
        return None
    from csi_runtime.impostors import ImpostorError, check_index_has_means, required_impostors

    try:
        impostors = required_impostors(embedder)
        check_index_has_means(index, index_path)
    except ImpostorError as exc:
        raise SystemExit(f"csi: {exc}") from None
    return impostors


def _cohort(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"--cohort must be an integer >= 0 (got {text!r})")
    return value


def _threshold(args: argparse.Namespace, embedder: Any) -> tuple[float, int, bool]:
    """(threshold, cohort, impostors) from --threshold/--cohort/--impostors or from a csi calibrate
    JSON. A calibration of detections also sets --min-windows, --max-gap-windows, --window-s and
    --hop-s (its threshold holds for those only: a different value given on the command line is an
    error); one made with impostors needs the same impostor set."""
    model_id = embedder.model_id
    if args.threshold is not None:  # a raw similarity unless a cohort or impostors are given with it
        return float(args.threshold), args.cohort or 0, bool(args.impostors)
    if not args.calibration:
        raise SystemExit("csi: give --threshold T or --calibration FILE (from csi calibrate)")
    data = json.loads(Path(args.calibration).read_text())
    if data.get("model_id") not in (None, model_id):
        raise SystemExit(
            f"csi: {args.calibration} was calibrated for model {data['model_id']}, not {model_id}"
        )
    cohort = int(data.get("cohort", 0))  # files written before cohorts existed hold raw thresholds
    if args.cohort is not None and args.cohort != cohort:
        raise SystemExit(
            f"csi: {args.calibration} was calibrated with a cohort of {cohort}, not {args.cohort}; "
            "its threshold means nothing for another cohort (recalibrate, or drop --cohort)"
        )
    if data.get("per") == "detection":
        for key in ("min_windows", "max_gap_windows", "window_s", "hop_s"):
            given, calibrated = getattr(args, key), data[key]
            if given is not None and given != calibrated:
                flag = "--" + key.replace("_", "-")
                raise SystemExit(
                    f"csi: {args.calibration} calibrated detections with {flag} {calibrated}, not {given}; "
                    f"its threshold holds for those settings only (recalibrate, or drop {flag})"
                )
            setattr(args, key, calibrated)
    sha = data.get("impostors")  # the sha256 of the impostor set it was calibrated with, or None
    if args.impostors and sha is None:
        raise SystemExit(
            f"csi: {args.calibration} was calibrated without impostors; recalibrate with --impostors "
            "(or drop --impostors)"
        )
    if sha is not None:
        own = embedder.impostors
        if own is None or own.sha256 != sha:
            raise SystemExit(
                f"csi: {args.calibration} was calibrated with impostor set {str(sha)[:16]}…, which "
                f"model {model_id} {'does not have' if own is None else 'no longer has'}; recalibrate"
            )
    return float(data["threshold"]), cohort, sha is not None


# -- monitor -----------------------------------------------------------------------------------------


def _source(args: argparse.Namespace, sample_rate: int) -> Any:
    from csi_runtime import sources
    from csi_runtime.audio import is_url

    if args.source == "-":
        if args.pcm_rate is None:
            raise SystemExit("csi: raw PCM on stdin needs --pcm-rate (and --pcm-channels / --pcm-format)")
        return sources.PCMSource(
            sys.stdin.buffer,
            args.pcm_rate,
            channels=args.pcm_channels,
            dtype=args.pcm_format,
            sample_rate=sample_rate,
            start_utc=args.start_utc,
        )
    if is_url(args.source):
        return sources.FFmpegSource(args.source, sample_rate)
    return sources.FileSource(args.source, sample_rate, start_utc=args.start_utc, realtime=args.realtime)


def cmd_monitor(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from csi_runtime.index import ReferenceIndex
    from csi_runtime.monitor import DetectionSink, Monitor, run_monitor

    embedder = _embedder(args)
    index = ReferenceIndex.load(args.index, mmap=True)
    threshold, cohort, use_impostors = _threshold(args, embedder)
    impostors = _impostors(use_impostors, embedder, index, args.index)
    min_windows, max_gap = _tracker_settings(args)
    metrics = None
    if args.metrics_port:
        from csi_runtime.metrics import MonitorMetrics, start_http_server

        metrics = MonitorMetrics()
        start_http_server(args.metrics_port)
    if args.start_utc:
        try:
            start_utc = datetime.fromisoformat(args.start_utc.replace("Z", "+00:00"))
        except ValueError:
            raise SystemExit(f"csi: --start-utc {args.start_utc!r} is not an ISO 8601 time") from None
        if start_utc.tzinfo is None:
            start_utc = start_utc.replace(tzinfo=UTC)
    else:
        start_utc = datetime.now(UTC)
    args.start_utc = start_utc
    channel = args.channel or (Path(args.source).stem if args.source != "-" else "stdin")
    sink = DetectionSink(args.out, plots=not args.no_plots)
    monitor = Monitor(embedder, index, channel=channel, threshold=threshold, k=args.k, cohort=cohort,
                      impostors=impostors,
                      min_windows=min_windows, max_gap_windows=max_gap,
                      window_s=args.window_s, hop_s=args.hop_s, start_utc=start_utc, sink=sink,
                      metrics=metrics, search_threads=1)  # fmt: skip
    shown = {"n": 0}

    def progress(m: Any) -> None:
        if sys.stderr.isatty():
            sys.stderr.write(f"\r{channel}: {m.position_s / 60:8.1f} min monitored, "
                             f"{m.detections_emitted} detections, {m.gaps_recorded} gaps")  # fmt: skip
            sys.stderr.flush()
            shown["n"] += 1

    try:
        with _source(args, embedder.sample_rate) as source:
            summary = run_monitor(source, monitor, progress=progress)
    finally:
        sink.close()
        if shown["n"]:
            sys.stderr.write("\n")
    print(f"{channel}: {summary.stream_s / 60:.1f} min monitored, {summary.detections} detections, "
          f"{summary.gaps} gaps → {args.out}")  # fmt: skip
    return 0


# -- registration ------------------------------------------------------------------------------------


def register(sub: Any, index_sub: Any) -> None:
    """Add identify / monitor / calibrate to ``csi`` and the audio form of ``csi index build``."""
    p = sub.add_parser("identify", help="which works of an index are played in audio files")
    p.add_argument("files", nargs="+", help="audio files or URLs")
    p.add_argument("--index", required=True, help="reference index (.csi) built with the same model")
    p.add_argument("-k", type=int, default=10, help="works to list (default 10)")
    p.add_argument("--json", action="store_true")
    add_model_args(p)
    p.set_defaults(func=cmd_identify)

    p = sub.add_parser("monitor", help="detect catalog works in a stream (file, stdin PCM or URL)")
    p.add_argument("source", help="audio file, '-' for raw PCM on stdin, or a URL (via ffmpeg)")
    p.add_argument("--index", required=True, help="reference index (.csi)")
    p.add_argument("--out", required=True, help="folder for detections (JSONL, CSV, PNG timelines)")
    p.add_argument("--channel", help="channel name in the detections (default: the source's name)")
    p.add_argument("--threshold", type=float, help="decision threshold on the window score")
    p.add_argument("--calibration", help="JSON written by csi calibrate (its threshold and cohort)")
    p.add_argument(
        "--cohort",
        type=_cohort,
        help="cohort of the normalised score (default: the calibration's; with --threshold, 0: raw)",
    )
    p.add_argument(
        "--impostors",
        action="store_true",
        help="impostor-normalised scores (the bundle's impostor set; default: as calibrated)",
    )
    p.add_argument("--start-utc", help="UTC time of the source's first sample (default: now)")
    p.add_argument("--window-s", type=float, help="window length, s (default: the model's)")
    p.add_argument("--hop-s", type=float, help="hop between windows, s (default: the model's)")
    p.add_argument("-k", type=int, default=10, help="works ranked per window")
    p.add_argument("--min-windows", type=int, help="windows a detection needs (default 2)")
    p.add_argument("--max-gap-windows", type=int, help="non-matching windows a detection bridges (default 2)")
    p.add_argument("--realtime", action="store_true", help="read a file at playback speed")
    p.add_argument("--pcm-rate", type=int, help="stdin PCM: sample rate, Hz")
    p.add_argument("--pcm-channels", type=int, default=1, help="stdin PCM: channels")
    p.add_argument("--pcm-format", default="s16le", choices=["s16le", "s32le", "f32le"])
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument("--no-plots", action="store_true", help="no PNG timelines")
    add_model_args(p)
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("calibrate", help="pick the threshold for a target false-alarm rate")
    p.add_argument("--index", required=True, help="reference index (.csi)")
    p.add_argument("--positives", required=True, help="manifest/folder of versions of works in the index")
    p.add_argument("--negatives", required=True, help="manifest/folder of music NOT in the index")
    p.add_argument(
        "--far",
        type=float,
        default=0.01,
        help="target false-alarm rate per window, or per negative recording with --per detection "
        "(default 0.01)",
    )
    p.add_argument(
        "--per",
        choices=["window", "detection"],
        default="window",
        help="window: a threshold on single windows; detection: on the monitor's detections "
        "(min-windows matching windows), one score per recording, which lets the threshold sit "
        "lower at the same rate of false detections (cut negatives to the length of a broadcast item)",
    )
    p.add_argument("--min-windows", type=int, help="with --per detection: as csi monitor (default 2)")
    p.add_argument("--max-gap-windows", type=int, help="with --per detection: as csi monitor (default 2)")
    p.add_argument("--window-s", type=float, help="window length, s (default: the model's)")
    p.add_argument("--hop-s", type=float, help="hop between windows, s (default: the model's)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument(
        "--cohort",
        type=_cohort,
        default=None,
        help="score minus the mean of the next COHORT works' (default 4 without impostors, 0 with "
        "them; 0: none); giving it turns the default impostors off",
    )
    p.add_argument(
        "--impostors",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="normalise scores with the model bundle's impostor set (csi_runtime.impostors; the "
        "index must have been built from the same bundle). Default: on when the bundle has a set, "
        "the index its means and no --cohort is given; --no-impostors: the catalog cohort",
    )
    p.add_argument("-o", "--out", help="write the calibration JSON here")
    add_model_args(p)
    p.set_defaults(func=cmd_calibrate)

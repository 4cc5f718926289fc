"""``csi data …``: build note-event corpora and rendered-version corpora, check manifests."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _bar(total: int, label: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="it", dynamic_ncols=True, file=sys.stderr)


def cmd_notes(args: argparse.Namespace) -> int:
    from csi_training.render.notes import ExtractionReport, extract_works, save_note_corpus

    report = ExtractionReport()
    bar = _bar(0, "parsing scores")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    items = [s.strip() for s in args.sources.split(",") if s.strip()] if args.sources else []
    if any(":" in item for item in items):
        # per-collection limits ("bach:250,essenFolksong:900"): extracted one after another, then
        # near-duplicates across collections removed (the earlier collection's work is kept)
        from csi_training.render.notes import dedupe_works

        works = []
        for item in items:
            name, _, limit = item.partition(":")
            works += extract_works(limit=int(limit) if limit else None, sources=[name], progress=progress,
                                   workers=args.workers, report=report)  # fmt: skip
        works, dropped = dedupe_works(works)
        if dropped:
            print(f"{len(dropped)} near-duplicate works across collections dropped")
    else:
        from csi_training.render.notes import DEFAULT_SOURCES

        works = extract_works(limit=args.limit, sources=items or DEFAULT_SOURCES, progress=progress,
                              workers=args.workers, report=report)  # fmt: skip
    bar.close()
    save_note_corpus(args.out, works)
    print(f"{len(works)} distinct works → {args.out}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from csi_training.render.corpus import render_corpus
    from csi_training.render.notes import extract_works, load_note_corpus

    if args.notes:
        works = load_note_corpus(args.notes)
    else:
        bar = _bar(0, "parsing scores")

        def parsed(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        works = extract_works(limit=args.limit, workers=args.workers, progress=parsed)
        bar.close()
    bar = _bar(0, f"rendering ({args.renderer})")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    manifest = render_corpus(
        args.out,
        works,
        args.versions,
        renderer=args.renderer,
        sample_rate=args.sample_rate,
        seed=args.seed,
        workers=args.workers,
        progress=progress,
        max_duration_s=args.max_duration_s,
        limit=args.limit,
    )
    bar.close()
    print(f"manifest: {manifest}")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from csi_training.data import read_manifest, scan_manifest

    report = scan_manifest(read_manifest(args.manifest), args.sample_rate, workers=args.workers)
    print(report.summary())
    for skipped in report.skipped:
        print(f"  {skipped.entry.path}: {skipped.reason}")
    return 0 if not report.skipped else 1


def register(sub: Any) -> None:
    data = sub.add_parser("data", help="note-event corpora, rendered-version corpora, manifest checks")
    dsub = data.add_subparsers(dest="data_command", required=True)

    p = dsub.add_parser("notes", help="extract note events of music21's bundled scores (distinct works)")
    p.add_argument("--out", required=True, help="note-event corpus file to write (.npz)")
    p.add_argument("--limit", type=int, default=None, help="stop after this many distinct works")
    p.add_argument(
        "--sources",
        default=None,
        help="comma-separated music21 collections (default: all); NAME:N takes at most N works of a "
        "collection, e.g. bach:250,essenFolksong:900,oneills1850:700",
    )
    p.add_argument("--workers", type=int, default=1, help="parsing processes")
    p.set_defaults(func=cmd_notes)

    p = dsub.add_parser("render", help="render versions of each work to FLAC + manifest.csv")
    p.add_argument("--out", required=True, help="corpus folder (resumable)")
    p.add_argument(
        "--notes", default=None, help="note-event corpus from `csi data notes` (default: parse now)"
    )
    p.add_argument("--versions", type=int, default=4, help="versions per work")
    p.add_argument(
        "--renderer",
        default="synth",
        choices=["synth", "fluidsynth"],
        help="fast built-in synthesiser, or FluidSynth with General-MIDI soundfonts",
    )
    p.add_argument("--limit", type=int, default=None, help="at most this many works")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--max-duration-s", type=float, default=None, help="cut each version to this length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_render)

    p = dsub.add_parser("scan", help="decode every file of a manifest and report the unusable ones")
    p.add_argument("--manifest", required=True)
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_scan)

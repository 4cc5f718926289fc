"""Adds an impostor set to a model bundle (``csi_runtime.impostors``): windows of training works.

Impostors must be music that a catalog or a stream never holds, in the style of what is monitored:
the model's own training works fit both (a deployment's catalog holds other works, and held-out
evaluations stay honest because test works are never drawn). One recording of each of ``works``
randomly drawn works is embedded window by window (the model's window, ``hop_s`` apart, silent
windows dropped) with the bundle's runtime ``Embedder``, so the vectors are exactly those the
monitor compares. The bundle gets ``impostors.npy`` (float16 [C, D]) and a ``"impostors"`` section
in model.json, whose ``files`` then list the array's sha256; both are written atomically, the array
first, so an interrupted run leaves the bundle as it was or complete.

    python -m csi_training.impostor_set --bundle runtime/csi_runtime/models/default \\
        --manifest runs/rendered/train_manifest.csv --works 600

Indexes built before the set was added lack the windows' impostor means: rebuild them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from csi_runtime.atomic import atomic_open, atomic_write_text
from csi_runtime.audio import AudioError
from csi_runtime.bundle import MANIFEST_NAME, load_bundle, sha256_file
from csi_runtime.embedder import Embedder
from csi_runtime.impostors import DEFAULT_TOP, IMPOSTORS_FILE, MANIFEST_KEY, ImpostorSet
from csi_training.data.manifest import ManifestEntry, read_manifest

__all__ = ["DEFAULT_HOP_S", "DEFAULT_WORKS", "add_impostor_set", "main", "pick_recordings"]

logger = logging.getLogger(__name__)

DEFAULT_WORKS = 600
DEFAULT_SEED = 1
#: seconds between impostor windows (a quarter of the default model's 20 s window, like references)
DEFAULT_HOP_S = 5.0


def pick_recordings(entries: Sequence[ManifestEntry], works: int, seed: int) -> list[ManifestEntry]:
    """One recording of each of ``works`` works drawn at random (all works if there are fewer),
    in a deterministic order for a given seed."""
    if isinstance(works, bool) or not isinstance(works, int) or works < 1:
        raise ValueError(f"works must be a positive integer (got {works!r})")
    by_work: dict[str, list[ManifestEntry]] = {}
    for e in entries:
        by_work.setdefault(str(e.work_id), []).append(e)
    if not by_work:
        raise ValueError("the manifest lists no recordings")
    rng = np.random.default_rng(seed)
    names = sorted(by_work)
    chosen = rng.permutation(len(names))[: min(works, len(names))]
    return [by_work[names[i]][int(rng.integers(len(by_work[names[i]])))] for i in sorted(chosen)]


def add_impostor_set(
    bundle_dir: str | os.PathLike[str],
    manifest: str | os.PathLike[str],
    works: int = DEFAULT_WORKS,
    seed: int = DEFAULT_SEED,
    hop_s: float = DEFAULT_HOP_S,
    top: int = DEFAULT_TOP,
    threads: int | None = None,
) -> dict[str, object]:
    """Embeds impostor windows of ``works`` training works into the bundle at ``bundle_dir``
    (replacing any set it had) and returns the model.json section written.

    Unreadable or silent recordings are skipped (logged and counted in the section); raises
    ValueError when no window is left or fewer than ``top``.
    """
    folder = Path(bundle_dir)
    bundle = load_bundle(folder)
    embedder = Embedder(bundle, threads=threads)
    picked = pick_recordings(read_manifest(manifest), works, seed)
    vectors, used, skipped = [], 0, 0
    for i, entry in enumerate(picked, 1):
        try:
            seg = embedder.embed_segments(entry.path, hop_s=hop_s)
        except (AudioError, ValueError, OSError) as exc:
            logger.warning("impostor set: skipped %s: %s", entry.path, exc)
            skipped += 1
            continue
        audible = seg.vectors[~seg.silent]
        if len(audible) == 0:
            skipped += 1
            continue
        vectors.append(audible)
        used += 1
        if i % 100 == 0 or i == len(picked):
            logger.info("impostor set: %d/%d recordings embedded", i, len(picked))
    if not vectors:
        raise ValueError(f"no audible window in the {len(picked)} recordings drawn from {manifest}")
    stacked = np.concatenate(vectors).astype(np.float16)
    impostors = ImpostorSet(stacked, top=top)  # validates (enough windows for top, finite)
    with atomic_open(folder / IMPOSTORS_FILE, "wb") as fh:
        np.save(fh, stacked, allow_pickle=False)
    section = {
        **impostors.manifest_section(works=used),
        "source": {
            "manifest": Path(manifest).name,
            "seed": int(seed),
            "hop_s": float(hop_s),
            "recordings_skipped": skipped,
        },
    }
    manifest_data = dict(bundle.manifest)
    manifest_data[MANIFEST_KEY] = section
    manifest_data["files"] = {
        **bundle.manifest["files"],
        IMPOSTORS_FILE: sha256_file(folder / IMPOSTORS_FILE),
    }
    atomic_write_text(folder / MANIFEST_NAME, json.dumps(manifest_data, indent=2) + "\n")
    load_bundle(folder)  # the result must load (hashes, schema)
    logger.info("impostor set: %d windows of %d works → %s", len(stacked), used, folder / IMPOSTORS_FILE)
    return section


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m csi_training.impostor_set", description=__doc__.split("\n")[0]
    )
    p.add_argument("--bundle", required=True, help="model bundle folder to add the set to")
    p.add_argument(
        "--manifest", required=True, help="the model's TRAINING manifest (path,work_id[,version_id])"
    )
    p.add_argument(
        "--works", type=int, default=DEFAULT_WORKS, help=f"works to draw (default {DEFAULT_WORKS})"
    )
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--hop-s", type=float, default=DEFAULT_HOP_S, help="seconds between windows")
    p.add_argument("--top", type=int, default=DEFAULT_TOP, help="impostor windows averaged per score")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        section = add_impostor_set(args.bundle, args.manifest, args.works, args.seed, args.hop_s, args.top,
                                   args.threads)  # fmt: skip
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(section, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

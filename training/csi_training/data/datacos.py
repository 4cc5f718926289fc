"""Da-TACOS (MTG): SecondHandSongs metadata and pre-extracted features in HDF5, no audio.

Layout after unzipping the Zenodo archives into one folder ``root``::

    root/da-tacos_metadata/da-tacos_benchmark_subset_metadata.json        {W_id: {P_id: {...}}}
    root/da-tacos_metadata/da-tacos_coveranalysis_subset_metadata.json
    root/da-tacos_benchmark_subset_hpcp/W_163992_hpcp/P_547131_hpcp.h5    one feature per file
    root/da-tacos_benchmark_subset_single_files/W_163992/P_547131.h5      all features per file

(features: cens, crema, hpcp, key, madmom, mfcc, tags). Each ``.h5`` was written by
``deepdish.io.save`` from a dict: arrays are HDF5 datasets at the root (zlib-compressed with
shuffle when larger than 300 values, deepdish's default), strings and scalars (``label``,
``track_id``) are attributes of the root group. Dataset names per feature folder:

    hpcp  → "hpcp"         [n_frames, 12]  essentia HPCP
    crema → "crema"        [n_frames, 12]  crema chord-model pitch activations
    cens  → "chroma_cens"  [n_frames, 12]  librosa chroma_cens, stored transposed to frames × 12
    mfcc  → "mfcc_htk"     [13, n_frames]  HTK-style MFCC, stored coefficients × frames

All frame-wise features use 44.1 kHz audio and a 512-sample hop (``FRAME_RATE_HZ``).

Sources read: MTG/da-tacos ``README.md`` (metadata example, file structure, the per-feature and
single-file dicts), mirdata ``datasets/da_tacos.py`` (Zenodo archive names, the paths
``da-tacos_<subset>_subset_<feature>/<W>_<feature>/<P>_<feature>.h5``, the keys ``chroma_cens``,
``crema``, ``hpcp``, ``mfcc_htk``, ``key_extractor``, ``madmom_features``, ``tags``), acoss
``acoss/features.py`` (shapes and hop) and ``acoss/extractors.py`` (``dd.io.save`` of the dict,
``label`` = clique folder, ``track_id`` = file stem), deepdish ``io/hdf5io.py`` and ``conf.py``
(arrays as datasets, scalars as attributes, default compression zlib, empty arrays stored as
their shape with a ``zeroarray_dtype`` attribute).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

logger = logging.getLogger(__name__)

SUBSETS = ("benchmark", "coveranalysis")
FRAME_RATE_HZ = 44100 / 512


@dataclass(frozen=True)
class FeatureSpec:
    """Where a frame-wise feature lives in the .h5 and how it is oriented there."""

    key: str  # HDF5 dataset name
    n_bins: int  # values per frame
    stored_transposed: bool  # True: stored [n_bins, n_frames]


FEATURES: dict[str, FeatureSpec] = {
    "hpcp": FeatureSpec("hpcp", 12, False),
    "crema": FeatureSpec("crema", 12, False),
    "cens": FeatureSpec("chroma_cens", 12, False),
    "mfcc": FeatureSpec("mfcc_htk", 13, True),
}
# Published feature folders that hold no frame-wise array (dicts / lists in the .h5).
OTHER_FEATURE_FOLDERS = ("key", "madmom", "tags")

OnMissing = Literal["raise", "skip"]


class DaTacosError(ValueError):
    """The Da-TACOS folder, metadata or a feature file is missing, malformed or corrupt."""


@dataclass(frozen=True)
class DaTacosItem:
    """One performance. work_id: "W_…" (clique), version_id: "P_…" (performance)."""

    root: Path
    subset: str
    work_id: str
    version_id: str
    work_title: str = ""
    perf_title: str = ""
    perf_artist: str = ""

    def feature_file(self, feature: str) -> Path:
        """The per-feature file: <root>/da-tacos_<subset>_subset_<f>/<W>_<f>/<P>_<f>.h5."""
        folder = self.root / f"da-tacos_{self.subset}_subset_{feature}"
        return folder / f"{self.work_id}_{feature}" / f"{self.version_id}_{feature}.h5"

    def single_file(self) -> Path:
        """The all-features file: <root>/da-tacos_<subset>_subset_single_files/<W>/<P>.h5."""
        folder = self.root / f"da-tacos_{self.subset}_subset_single_files"
        return folder / self.work_id / f"{self.version_id}.h5"

    def find_feature_file(self, feature: str) -> Path | None:
        """The per-feature file if present, else the single file if present, else None."""
        for candidate in (self.feature_file(feature), self.single_file()):
            if candidate.is_file():
                return candidate
        return None


@dataclass(frozen=True)
class DaTacosSet:
    """items: performances (with the requested feature on disk); missing: those without it."""

    subset: str
    feature: str | None
    items: tuple[DaTacosItem, ...]
    missing: tuple[DaTacosItem, ...]


def metadata_path(root: str | os.PathLike[str], subset: str = "benchmark") -> Path:
    _check_subset(subset)
    return Path(root).expanduser() / "da-tacos_metadata" / f"da-tacos_{subset}_subset_metadata.json"


def read_datacos_metadata(
    root: str | os.PathLike[str], subset: str = "benchmark"
) -> dict[str, dict[str, dict[str, Any]]]:
    """The subset's metadata JSON, {W_id: {P_id: {work_title, perf_artist, …}}}, validated."""
    path = metadata_path(root, subset)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise DaTacosError(
            f"Da-TACOS metadata not found: {path} (download da-tacos_metadata.zip and unzip it into {root})"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DaTacosError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise DaTacosError(f"{path}: expected a non-empty object {{W_id: {{P_id: {{...}}}}}}")
    seen: dict[str, str] = {}
    for work_id, performances in data.items():
        if not isinstance(performances, dict) or not performances:
            raise DaTacosError(f"{path}: work {work_id!r} must map to a non-empty object of performances")
        for perf_id, info in performances.items():
            if not isinstance(info, dict):
                raise DaTacosError(f"{path}: {work_id}/{perf_id} must be an object of metadata fields")
            if perf_id in seen:
                raise DaTacosError(
                    f"{path}: performance {perf_id} is listed under {seen[perf_id]} and {work_id}"
                )
            seen[perf_id] = work_id
    return data


def load_datacos(
    root: str | os.PathLike[str],
    subset: str = "benchmark",
    *,
    feature: str | None = "hpcp",
    on_missing: OnMissing = "skip",
) -> DaTacosSet:
    """Lists the subset's performances from its metadata, in metadata order.

    feature: keep only performances whose file for this feature exists (per-feature folder or
        single files); None lists every performance without touching the feature files.
    on_missing: "skip" → one warning with the count, missing ones in ``DaTacosSet.missing``;
        "raise" → DaTacosError naming the first missing files.
    """
    if on_missing not in ("raise", "skip"):
        raise ValueError(f"on_missing must be 'raise' or 'skip', got {on_missing!r}")
    if feature is not None:
        _check_feature_name(feature)
    base = Path(root).expanduser().resolve()
    metadata = read_datacos_metadata(base, subset)
    all_items = list(_items(base, subset, metadata))
    if feature is None:
        return DaTacosSet(subset, None, tuple(all_items), ())
    present: list[DaTacosItem] = []
    missing: list[DaTacosItem] = []
    for item in all_items:
        (present if item.find_feature_file(feature) is not None else missing).append(item)
    if missing:
        examples = ", ".join(str(item.feature_file(feature)) for item in missing[:3])
        message = (
            f"Da-TACOS {subset}: no {feature!r} file for {len(missing)} of {len(all_items)} performances "
            f"(e.g. {examples}; single files under da-tacos_{subset}_subset_single_files/ also checked)"
        )
        if on_missing == "raise":
            raise DaTacosError(message)
        logger.warning("%s", message)
    return DaTacosSet(subset, feature, tuple(present), tuple(missing))


def load_features(item: DaTacosItem, feature: str = "hpcp") -> np.ndarray:
    """One performance's frame-wise feature as float32 [n_frames, n_bins] (12 for chroma, 13 for mfcc).

    Frames are at ``FRAME_RATE_HZ``. Raises DaTacosError naming the file for a missing or corrupt
    file, a missing dataset, an unexpected shape, zero frames or NaN/Inf values.
    """
    spec = FEATURES.get(feature)
    if spec is None:
        _check_feature_name(feature)
        raise DaTacosError(
            f"{feature!r} is not a frame-wise array feature; load_features reads {', '.join(FEATURES)}"
        )
    path = item.find_feature_file(feature)
    if path is None:
        raise DaTacosError(
            f"no {feature!r} file for {item.work_id}/{item.version_id}: neither {item.feature_file(feature)} "
            f"nor {item.single_file()} exists"
        )
    return read_feature_file(path, feature)


def read_feature_file(path: str | os.PathLike[str], feature: str = "hpcp") -> np.ndarray:
    """Reads one Da-TACOS .h5 (per-feature or single file) as float32 [n_frames, n_bins]."""
    spec = FEATURES.get(feature)
    if spec is None:
        raise DaTacosError(f"{feature!r} is not a frame-wise array feature ({', '.join(FEATURES)})")
    source = Path(path)
    try:
        with h5py.File(source, "r") as fh:
            if spec.key not in fh:
                raise DaTacosError(f"{source}: no dataset {spec.key!r} (the file holds {sorted(fh.keys())})")
            node = fh[spec.key]
            if not isinstance(node, h5py.Dataset):
                raise DaTacosError(f"{source}: {spec.key!r} is a group, not an array")
            if "zeroarray_dtype" in node.attrs:  # deepdish's encoding of an array with a zero dimension
                raise DaTacosError(f"{source}: {spec.key!r} is empty (zero frames)")
            values = np.asarray(node[()])
    except DaTacosError:
        raise
    except FileNotFoundError:
        raise DaTacosError(f"{source}: no such file") from None
    except OSError as exc:  # h5py reports truncated / non-HDF5 / undecodable files as OSError
        raise DaTacosError(f"{source}: cannot read the HDF5 file ({exc})") from None
    if values.dtype.kind not in "fiu":
        raise DaTacosError(f"{source}: {spec.key!r} has dtype {values.dtype}, expected numbers")
    expected = f"[{spec.n_bins}, n_frames]" if spec.stored_transposed else f"[n_frames, {spec.n_bins}]"
    bins_axis = 0 if spec.stored_transposed else 1
    if values.ndim != 2 or values.shape[bins_axis] != spec.n_bins:
        raise DaTacosError(f"{source}: {spec.key!r} has shape {values.shape}, expected {expected}")
    frames = values.T if spec.stored_transposed else values
    if frames.shape[0] == 0:
        raise DaTacosError(f"{source}: {spec.key!r} has zero frames")
    out = np.ascontiguousarray(frames, dtype=np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        raise DaTacosError(f"{source}: {spec.key!r} has {out.size - int(finite.sum())} NaN/Inf value(s)")
    return out


def _items(root: Path, subset: str, metadata: dict[str, dict[str, dict[str, Any]]]) -> Iterator[DaTacosItem]:
    for work_id, performances in metadata.items():
        for perf_id, info in performances.items():
            yield DaTacosItem(
                root=root,
                subset=subset,
                work_id=work_id,
                version_id=perf_id,
                work_title=str(info.get("work_title") or ""),
                perf_title=str(info.get("perf_title") or ""),
                perf_artist=str(info.get("perf_artist") or ""),
            )


def _check_subset(subset: str) -> None:
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {', '.join(SUBSETS)}, got {subset!r}")


def _check_feature_name(feature: str) -> None:
    if feature not in FEATURES and feature not in OTHER_FEATURE_FOLDERS:
        known = ", ".join((*FEATURES, *OTHER_FEATURE_FOLDERS))
        raise ValueError(f"unknown Da-TACOS feature {feature!r}; published features: {known}")

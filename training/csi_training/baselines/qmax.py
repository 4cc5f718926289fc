"""Serra et al.'s Qmax cover-song distance, computed with essentia.

Serra, Serra & Andrzejak (2009), "Cross recurrence quantification for cover song identification",
New Journal of Physics 11. The chain is essentia's (see its cover-song tutorial):

1. ``ChromaCrossSimilarity``: transpose the reference chroma to the query's key by the optimal
   transposition index (OTI, Serra et al. 2008: the circular shift that best aligns the two
   global chroma profiles); stack ``m = 9`` consecutive frames (delay ``tau = 1``) into one vector;
   Euclidean distances between all query/reference stacks; a cell is 1 when its distance is
   within the closest ``kappa = 9.5 %`` of both its row and its column (binary cross-recurrence).
2. ``CoverSongSimilarity`` (alignmentType "serra09", disruption onset/extension penalties 0.5):
   a Smith-Waterman-style local alignment on the cross-recurrence plot; Qmax is the highest
   cumulative score, i.e. the length of the longest well-matching (possibly tempo-warped) path.
3. Distance (essentia's "asymmetric" distance): ``sqrt(N_ref) / Qmax``, with ``N_ref`` the number
   of stacked reference frames; ``inf`` when nothing aligns (Qmax = 0).

Inputs are HPCP chroma [T, 12] at the Qmax time resolution: ``chroma_features.track_chroma``
gives HPCP downsampled to ≈ 0.46 s per frame, as Da-TACOS feeds this algorithm.

Asymmetry: the distance is normalised by the reference length, so D(a, b) != D(b, a) in general,
and retrieval ranks references j for a query i by D[i, j] (row i), as essentia's "asymmetric"
distance is meant to be used. In exact arithmetic the alignment score itself would not depend on
which track is the query (the binarisation treats rows and columns alike and the serra09
recursion is transpose-symmetric), but essentia's float32 thresholding does not always agree when
many stacked frames are nearly identical (sustained or repeated chroma): on monophonic synthetic
melodies 3 of 400 ordered pairs got different scores (e.g. 11 vs 8). ``qmax_distance_matrix``
therefore aligns every ordered pair by default; ``symmetric=True`` halves the cost by aligning
each unordered pair once.

Cost: essentia's cross-similarity dominates (≈ 80 %) and grows faster than the product of the two
lengths; measured on a shared 2-core machine, per pair: ≈ 1.4 ms for two 30 s tracks (65 frames),
≈ 40-60 ms for 2 min (260 frames), ≈ 120-200 ms for 4 min (517 frames).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from csi_training.baselines.chroma_features import N_CHROMA, ProgressCallback, process_pool, require_essentia

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QmaxConfig:
    """Qmax parameters; defaults are essentia's (= Serra et al. 2009) and its tutorial's."""

    frame_stack_size: int = 9  # m, embedding dimension (frames per stacked vector)
    frame_stack_stride: int = 1  # tau, delay between stacked frames
    binarize_percentile: float = 0.095  # kappa, fraction of nearest neighbours marked similar
    oti: bool = True  # transpose the reference to the query's key first
    oti_binary: bool = False  # True: Serra et al. 2008 OTI-based binary similarity instead
    dis_onset: float = 0.5  # penalty for a disruption onset in the alignment
    dis_extension: float = 0.5  # penalty for extending a disruption

    def __post_init__(self) -> None:
        if self.frame_stack_size < 1 or self.frame_stack_stride < 1:
            raise ValueError(f"QmaxConfig: frame_stack_size and frame_stack_stride must be >= 1: {self}")
        if not 0.0 < self.binarize_percentile <= 1.0:
            raise ValueError(
                f"QmaxConfig: binarize_percentile must be in (0, 1], got {self.binarize_percentile}"
            )
        if self.dis_onset < 0 or self.dis_extension < 0:
            raise ValueError(f"QmaxConfig: disruption penalties must be >= 0: {self}")

    @property
    def min_frames(self) -> int:
        """Fewest chroma frames essentia's frame stacking accepts."""
        if self.frame_stack_size == 1:
            return 1
        return self.frame_stack_size * self.frame_stack_stride + 1


DEFAULT_QMAX = QmaxConfig()


def _checked_hpcp(hpcp: np.ndarray, what: str, config: QmaxConfig) -> np.ndarray:
    chroma = np.asarray(hpcp)
    if chroma.ndim != 2 or chroma.shape[1] != N_CHROMA:
        raise ValueError(f"{what}: expected HPCP of shape [T, {N_CHROMA}], got {chroma.shape}")
    if chroma.shape[0] < config.min_frames:
        raise ValueError(
            f"{what}: {chroma.shape[0]} frames; Qmax with frame_stack_size={config.frame_stack_size}, "
            f"frame_stack_stride={config.frame_stack_stride} needs at least {config.min_frames}"
        )
    if not np.all(np.isfinite(chroma)):
        raise ValueError(f"{what}: HPCP contains NaN or Inf")
    if not np.any(chroma):
        raise ValueError(f"{what}: HPCP is all zeros (silent track)")
    return np.ascontiguousarray(chroma, dtype=np.float32)


class _Aligners(threading.local):
    """Per-thread essentia algorithm instances (they hold state and are not thread-safe)."""

    def __init__(self) -> None:
        self.by_config: dict[QmaxConfig, tuple[Any, Any]] = {}

    def get(self, config: QmaxConfig) -> tuple[Any, Any]:
        algorithms = self.by_config.get(config)
        if algorithms is None:
            es = require_essentia()
            algorithms = (
                es.ChromaCrossSimilarity(
                    frameStackSize=config.frame_stack_size,
                    frameStackStride=config.frame_stack_stride,
                    binarizePercentile=config.binarize_percentile,
                    oti=config.oti,
                    otiBinary=config.oti_binary,
                ),
                es.CoverSongSimilarity(
                    disOnset=config.dis_onset,
                    disExtension=config.dis_extension,
                    alignmentType="serra09",
                    distanceType="asymmetric",
                ),
            )
            self.by_config[config] = algorithms
        return algorithms


_ALIGNERS = _Aligners()


def _score_checked(query: np.ndarray, reference: np.ndarray, config: QmaxConfig) -> tuple[float, int, int]:
    cross_similarity, alignment = _ALIGNERS.get(config)
    recurrence = cross_similarity(query, reference)
    score_matrix, _essentia_distance = alignment(recurrence)
    scores = np.asarray(score_matrix)
    return float(scores.max()), int(scores.shape[0]), int(scores.shape[1])


def qmax_score(
    query_hpcp: np.ndarray, reference_hpcp: np.ndarray, config: QmaxConfig = DEFAULT_QMAX
) -> tuple[float, int, int]:
    """Qmax alignment score of a query against a reference.

    query_hpcp, reference_hpcp: HPCP [T, 12] (T >= config.min_frames, finite, not all zero).
    Returns (Qmax, n_query_stacked, n_reference_stacked): the best cumulative alignment score and
    the shape of the cross-recurrence plot (stacked frames of query and reference).
    """
    query = _checked_hpcp(query_hpcp, "query_hpcp", config)
    reference = _checked_hpcp(reference_hpcp, "reference_hpcp", config)
    return _score_checked(query, reference, config)


def distance_from_score(score: float, n_reference_stacked: int) -> float:
    """essentia's asymmetric Qmax distance: sqrt(n_reference_stacked) / score (inf when score is 0)."""
    if score <= 0.0:
        return math.inf
    return math.sqrt(n_reference_stacked) / score


def qmax_distance(hpcp_a: np.ndarray, hpcp_b: np.ndarray, config: QmaxConfig = DEFAULT_QMAX) -> float:
    """Qmax distance of query ``hpcp_a`` to reference ``hpcp_b`` (lower = more similar).

    hpcp_a, hpcp_b: HPCP [T, 12] at the Qmax time resolution (≈ 0.46 s per frame, see
    ``chroma_features.track_chroma``). Returns sqrt(N_b) / Qmax (N_b: stacked frames of b), or inf
    when no path aligns. Not symmetric: the reference length enters the normalisation.
    """
    score, _n_query, n_reference = qmax_score(hpcp_a, hpcp_b, config)
    return distance_from_score(score, n_reference)


# State of qmax_distance_matrix's worker processes, set by the pool initializer.
_worker_hpcps: list[np.ndarray] = []
_worker_config: QmaxConfig = DEFAULT_QMAX


def _init_worker(hpcps: list[np.ndarray], config: QmaxConfig) -> None:
    global _worker_hpcps, _worker_config
    _worker_hpcps = hpcps
    _worker_config = config


def _align_pairs_of(
    hpcps: Sequence[np.ndarray], config: QmaxConfig, pairs: list[tuple[int, int]]
) -> list[tuple[int, int, float, int, int]]:
    results = []
    for i, j in pairs:
        score, n_i, n_j = _score_checked(hpcps[i], hpcps[j], config)
        results.append((i, j, score, n_i, n_j))
    return results


def _align_pairs(pairs: list[tuple[int, int]]) -> list[tuple[int, int, float, int, int]]:
    return _align_pairs_of(_worker_hpcps, _worker_config, pairs)


def qmax_distance_matrix(
    hpcps: Sequence[np.ndarray],
    workers: int = 1,
    progress: ProgressCallback | None = None,
    pairs: Iterable[tuple[int, int]] | None = None,
    config: QmaxConfig = DEFAULT_QMAX,
    symmetric: bool = False,
) -> np.ndarray:
    """Qmax distances between tracks: D[i, j] = qmax_distance(hpcps[i], hpcps[j]).

    hpcps: N HPCP arrays [T_k, 12] (see ``qmax_distance``).
    workers: processes (fork where available); 1 computes in this process.
    progress: called as progress(n_aligned, n_total) after each batch of alignments.
    pairs: ordered (query, reference) index pairs to compute; None = all N × N pairs, diagonal
        included (D[i, i] is the self-distance). Entries not computed are NaN.
    symmetric: False (default) aligns every requested ordered pair, so D[i, j] equals
        ``qmax_distance(hpcps[i], hpcps[j])`` exactly. True aligns each unordered pair {i, j}
        once (query = lower index) and fills D[i, j] = sqrt(N_j) / Q and D[j, i] = sqrt(N_i) / Q
        from that score Q: half the cost, and equal to separate alignments except where
        essentia's thresholding is order-dependent (see the module doc).
    Returns float64 [N, N]; rank references for query i by ascending D[i, :].
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    checked = [_checked_hpcp(h, f"hpcps[{k}]", config) for k, h in enumerate(hpcps)]
    n = len(checked)
    if pairs is None:
        wanted = [(i, j) for i in range(n) for j in range(n)]
    else:
        wanted = [(int(i), int(j)) for i, j in pairs]
        bad = [(i, j) for i, j in wanted if not (0 <= i < n and 0 <= j < n)]
        if bad:
            raise IndexError(f"pairs: indices out of range for {n} tracks: {bad[:5]}")
    # symmetric: one alignment per unordered pair, the lower index as query
    jobs = sorted({(min(i, j), max(i, j)) for i, j in wanted}) if symmetric else list(dict.fromkeys(wanted))
    wanted_set = set(wanted)
    distances = np.full((n, n), np.nan, dtype=np.float64)

    def record(batch: list[tuple[int, int, float, int, int]]) -> None:
        for i, j, score, n_i, n_j in batch:
            if (i, j) in wanted_set:
                distances[i, j] = distance_from_score(score, n_j)
            if symmetric and (j, i) in wanted_set:
                distances[j, i] = distance_from_score(score, n_i)

    total = len(jobs)
    batch_size = max(1, min(256, total // (max(workers, 1) * 16) or 1))
    batches = [jobs[s : s + batch_size] for s in range(0, total, batch_size)]
    done = 0
    if workers == 1 or len(batches) <= 1:
        for batch in batches:
            record(_align_pairs_of(checked, config, batch))
            done += len(batch)
            if progress is not None:
                progress(done, total)
        return distances
    with process_pool(min(workers, len(batches)), _init_worker, (checked, config)) as pool:
        for result in pool.imap_unordered(_align_pairs, batches):
            record(result)
            done += len(result)
            if progress is not None:
                progress(done, total)
    return distances

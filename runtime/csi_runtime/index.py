"""ReferenceIndex: the catalog of known works that stream windows are ranked against.

Each vector belongs to a *work* (a composition: covers, live versions and remixes of it are
all its vectors) and carries JSON metadata of its own (e.g. the recording it came from).
``search`` ranks vectors with the exact fused top-k kernel and aggregates them per work: a
work appears once, with its best-scoring vector's score and metadata.

Concurrency guarantee
---------------------
Any number of threads may call ``search``, ``save``, ``len`` and the other readers while
other threads ``add`` and ``remove``. Writers are serialised by a lock. Readers never lock:
they work on an immutable *snapshot* published atomically after each write, so every search
sees the index exactly as it was before or after each ``add``/``remove`` call, never half of
one. New vectors are written into buffer space beyond the published row count (no reader
looks there) and buffers are replaced rather than resized in place, so a reader's arrays are
never modified under it.

Storage
-------
Vectors are stored as float32, float16 (default: half the memory, negligible recall cost for
unit-norm embeddings) or int8 with a per-vector scale, chosen at creation. An index loaded
with ``mmap=True`` keeps its vectors in the file's page cache (catalogs larger than RAM); rows
added afterwards live in memory, removals are recorded as tombstones, and ``save`` writes one
compacted file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from csi_runtime import _native, index_format
from csi_runtime.checks import check_finite_rows
from csi_runtime.errors import IndexFileError, IndexModelMismatchError
from csi_runtime.info import __version__
from csi_runtime.quantize import quantize_int8
from csi_runtime.ranking import (
    CPU_MAX_K,
    METRICS,
    as_queries,
    check_threads,
    cuda_max_k,
    parse_device,
    require_cuda,
    topk_cpu,
    topk_cuda,
)

logger = logging.getLogger("csi_runtime")

WorkId = str | int
STORAGE: dict[str, np.dtype[Any]] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "int8": np.dtype(np.int8),
}
FLOAT16_MAX = 65504.0
_INITIAL_CAPACITY = 1024
# device="auto" mirrors the catalog on the GPU only if it takes at most this share of its memory.
_AUTO_GPU_MEMORY_SHARE = 0.5
_SAVE_CHUNK_ROWS = 1 << 16
# Sections whose checksums are always verified on load (small next to the vectors).
_ALWAYS_VERIFIED = ("scales", "row_work", "work_ids", "meta_offsets", "meta_blob")


class Hit(NamedTuple):
    """One search result: a work, its best score, and the metadata of the vector that scored it."""

    work_id: WorkId
    score: float
    metadata: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Segments: immutable views the snapshot holds.


@dataclass(frozen=True)
class _Segment:
    """A run of rows: vectors in storage dtype, per-row work ordinals and metadata."""

    vectors: np.ndarray  # [n, D] storage dtype
    scales: np.ndarray | None  # [n] float32, int8 storage only
    works: np.ndarray  # [n] int64 work ordinal
    meta_json: Sequence[str] | None  # in-memory rows: JSON text per row
    meta_offsets: np.ndarray | None = None  # file rows: uint64 [n + 1] into meta_blob
    meta_blob: np.ndarray | None = None  # file rows: uint8

    @property
    def rows(self) -> int:
        return int(self.vectors.shape[0])

    def metadata(self, row: int) -> dict[str, Any]:
        if self.meta_json is not None:
            return json.loads(self.meta_json[row])  # type: ignore[no-any-return,unused-ignore]
        assert self.meta_offsets is not None and self.meta_blob is not None
        lo, hi = int(self.meta_offsets[row]), int(self.meta_offsets[row + 1])
        if not 0 <= lo <= hi <= self.meta_blob.shape[0]:
            raise IndexFileError(f"metadata offsets of row {row} are out of range (file damaged)")
        try:
            value = json.loads(bytes(self.meta_blob[lo:hi]))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IndexFileError(f"metadata of row {row} is not valid JSON (file damaged): {exc}") from None
        if not isinstance(value, dict):
            raise IndexFileError(f"metadata of row {row} is not a JSON object (file damaged)")
        return value

    def metadata_bytes(self, rows: np.ndarray) -> Iterator[bytes]:
        for row in rows:
            if self.meta_json is not None:
                yield self.meta_json[int(row)].encode()
            else:
                assert self.meta_offsets is not None and self.meta_blob is not None
                yield bytes(self.meta_blob[int(self.meta_offsets[row]) : int(self.meta_offsets[row + 1])])


@dataclass(frozen=True)
class _Snapshot:
    segments: tuple[_Segment, ...]
    removed: frozenset[int]  # dead work ordinals
    live_rows: int
    live_works: int


@dataclass
class _GrowableSegment:
    """The writer's in-memory tail segment; only the writer (under the lock) touches it."""

    dim: int
    dtype: np.dtype
    rows: int = 0
    vectors: np.ndarray = field(init=False)
    scales: np.ndarray = field(init=False)
    works: np.ndarray = field(init=False)
    meta_json: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.vectors = np.empty((0, self.dim), self.dtype)
        self.scales = np.empty(0, np.float32)
        self.works = np.empty(0, np.int64)

    def append(
        self, vectors: np.ndarray, scales: np.ndarray | None, works: np.ndarray, meta: list[str]
    ) -> None:
        m = vectors.shape[0]
        need = self.rows + m
        if need > self.vectors.shape[0]:
            # Replace, never resize in place: readers may still hold views of the old buffers.
            cap = max(_INITIAL_CAPACITY, need, 2 * self.vectors.shape[0])
            self.vectors = _grown(self.vectors, cap, self.rows)
            self.scales = _grown(self.scales, cap, self.rows)
            self.works = _grown(self.works, cap, self.rows)
        self.vectors[self.rows : need] = vectors
        if scales is not None:
            self.scales[self.rows : need] = scales
        self.works[self.rows : need] = works
        self.meta_json.extend(meta)
        self.rows = need

    def view(self) -> _Segment:
        n = self.rows
        return _Segment(
            vectors=self.vectors[:n],
            scales=self.scales[:n] if self.dtype == np.int8 else None,
            works=self.works[:n],
            meta_json=_ListPrefix(self.meta_json, n),
        )


def _grown(arr: np.ndarray, cap: int, used: int) -> np.ndarray:
    out = np.empty((cap, *arr.shape[1:]), arr.dtype)
    out[:used] = arr[:used]
    return out


class _ListPrefix(Sequence[str]):
    """The first n items of an append-only list, frozen at snapshot time."""

    def __init__(self, items: list[str], n: int) -> None:
        self._items, self._n = items, n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        if not 0 <= i < self._n:
            raise IndexError(i)
        return self._items[i]


# ---------------------------------------------------------------------------------------------


def _check_work_id(w: Any) -> WorkId:
    if isinstance(w, bool) or not isinstance(w, (str, int, np.integer)):
        raise TypeError(f"work ids must be str or int (got {type(w).__name__}: {w!r})")
    return int(w) if isinstance(w, np.integer) else w


def _metadata_json(meta: Any, row: int) -> str:
    if meta is None:
        return "{}"
    if not isinstance(meta, dict):
        raise TypeError(f"metadata for row {row} must be a dict or None (got {type(meta).__name__})")
    try:
        return json.dumps(meta, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata for row {row} is not JSON-serialisable: {exc}") from None


class ReferenceIndex:
    """A catalog of reference vectors grouped by work, searchable with exact top-k.

    Args:
        dim: vector dimension D.
        dtype: storage of the vectors: ``"float16"`` (default), ``"float32"`` or ``"int8"``.
        metric: ``"ip"`` (inner product / cosine for unit-norm vectors; larger is better) or
            ``"l2"`` (squared Euclidean distance; smaller is better).
        model_id: the embedding model the vectors come from (``Embedder.model_id``), saved with
            the index so that a service using another model is refused (:meth:`check_model`).
            None: unknown (indexes saved before model ids were recorded load this way).
    """

    def __init__(
        self, dim: int, *, dtype: str = "float16", metric: str = "ip", model_id: str | None = None
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer (got {dim!r})")
        if dtype not in STORAGE:
            raise ValueError(f"dtype must be one of {sorted(STORAGE)} (got {dtype!r})")
        if metric not in METRICS:
            raise ValueError(f"metric must be 'ip' or 'l2' (got {metric!r})")
        if model_id is not None and (not isinstance(model_id, str) or not model_id.strip()):
            raise ValueError(f"model_id must be a non-empty string or None (got {model_id!r})")
        self._dim = int(dim)
        self._model_id = model_id
        self._warned_unknown_model = False
        self._dtype_name = dtype
        self._dtype = STORAGE[dtype]
        self._metric = metric
        self._write_lock = threading.Lock()
        self._work_ids: list[WorkId] = []  # ordinal -> id (append-only)
        self._ordinal: dict[WorkId, int] = {}  # live id -> ordinal
        self._rows_per_ordinal: list[int] = []
        self._live_rows = 0
        self._base: tuple[_Segment, ...] = ()
        self._tail = _GrowableSegment(self._dim, self._dtype)
        self._snapshot = _Snapshot((), frozenset(), 0, 0)
        # GPU copies of segments: (id(segment), device) -> (segment, vectors, scales).
        self._mirror_lock = threading.Lock()
        self._mirrors: dict[tuple[int, int], tuple[_Segment, Any, Any]] = {}

    # -- properties ---------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def dtype(self) -> str:
        return self._dtype_name

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def model_id(self) -> str | None:
        """The embedding model the vectors come from; None when the index does not record it."""
        return self._model_id

    @property
    def num_works(self) -> int:
        return self._snapshot.live_works

    def __len__(self) -> int:
        """Number of live vectors."""
        return self._snapshot.live_rows

    def __contains__(self, work_id: object) -> bool:
        return work_id in self._ordinal

    def work_ids(self) -> list[WorkId]:
        """Live work ids, in order of first addition."""
        with self._write_lock:
            return list(self._ordinal)

    def iter_metadata(self) -> Iterator[tuple[WorkId, dict[str, Any]]]:
        """(work_id, metadata) of every live vector, in insertion order (a consistent snapshot)."""
        snap = self._snapshot
        with self._write_lock:
            names = list(self._work_ids)  # ordinal -> id, append-only
        for seg in snap.segments:
            for row in range(seg.rows):
                ordinal = int(seg.works[row])
                if ordinal not in snap.removed:
                    yield names[ordinal], seg.metadata(row)

    def __repr__(self) -> str:
        return (
            f"ReferenceIndex(dim={self._dim}, dtype={self._dtype_name!r}, metric={self._metric!r}, "
            f"model_id={self._model_id!r}, vectors={len(self)}, works={self.num_works})"
        )

    def check_model(self, model_id: str, dim: int) -> None:
        """Refuses an embedder whose vectors are not comparable with this index's.

        Args:
            model_id: the embedder's model id (``Embedder.model_id``).
            dim: the embedder's vector dimension (``Embedder.dim``).

        Raises:
            IndexModelMismatchError: the index records another model, or its dimension differs.
                An index that records no model (``model_id`` None) is checked on the dimension
                only, with a warning logged once per index.
        """
        if self._model_id is None:
            if int(dim) != self._dim:
                raise IndexModelMismatchError(
                    f"index built with an unrecorded model (dim {self._dim}), this embedder is "
                    f"{model_id} (dim {dim}): rebuild the index with csi index build"
                )
            if not self._warned_unknown_model:
                self._warned_unknown_model = True
                logger.warning(
                    "the reference index does not record the model it was built with; only its "
                    "dimension (%d) could be checked against model %s. Rebuild it with csi index build "
                    "to record the model.",
                    self._dim,
                    model_id,
                )
            return
        if model_id != self._model_id or int(dim) != self._dim:
            raise IndexModelMismatchError(
                f"index built with model {self._model_id} (dim {self._dim}), this embedder is "
                f"{model_id} (dim {dim}): rebuild the index with csi index build"
            )

    # -- writing ------------------------------------------------------------------------------

    def _encode(self, vectors: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray | None]:
        x = np.asarray(vectors)
        if x.dtype.kind != "f":
            raise TypeError(f"vectors must be floating point (got {x.dtype})")
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self._dim:
            raise ValueError(f"vectors must have shape [N, {self._dim}] (got {x.shape})")
        x = x.astype(np.float32, copy=False)
        if self._dtype == np.int8:
            return quantize_int8(x)  # checks for NaN/Inf itself
        check_finite_rows(x, "vectors")
        if self._dtype == np.float16:
            too_big = (np.abs(x) > FLOAT16_MAX).any(axis=1)
            if too_big.any():
                raise ValueError(
                    f"vectors row {int(np.flatnonzero(too_big)[0])} has values beyond the float16 range "
                    "(use dtype='float32', or normalise the embeddings)"
                )
            return x.astype(np.float16), None
        return np.ascontiguousarray(x), None

    def add(
        self,
        vectors: npt.ArrayLike,
        work_ids: WorkId | Sequence[WorkId],
        metadata: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
    ) -> None:
        """Adds vectors ``[N, D]`` (or one ``[D]``) belonging to ``work_ids``.

        Args:
            vectors: any floating dtype; stored in the index's dtype.
            work_ids: one id (str or int) for all rows, or one per row. A work may get vectors
                in several calls.
            metadata: None, one dict for all rows, or one dict (or None) per row; must be
                JSON-serialisable. Returned with search hits.

        All input is validated before anything changes: a failing call adds nothing.
        """
        enc, scales = self._encode(vectors)
        m = enc.shape[0]
        if isinstance(work_ids, (str, int, np.integer)) and not isinstance(work_ids, bool):
            ids = [_check_work_id(work_ids)] * m
        else:
            ids = [_check_work_id(w) for w in work_ids]  # type: ignore[union-attr]
            if len(ids) != m:
                raise ValueError(f"got {len(ids)} work ids for {m} vectors")
        if metadata is None or isinstance(metadata, dict):
            meta = [_metadata_json(metadata, 0)] * m
        else:
            meta_list = list(metadata)
            if len(meta_list) != m:
                raise ValueError(f"got {len(meta_list)} metadata entries for {m} vectors")
            meta = [_metadata_json(md, i) for i, md in enumerate(meta_list)]
        if m == 0:
            return
        with self._write_lock:
            works = np.empty(m, np.int64)
            for i, w in enumerate(ids):
                o = self._ordinal.get(w)
                if o is None:
                    o = len(self._work_ids)
                    self._work_ids.append(w)
                    self._rows_per_ordinal.append(0)
                    self._ordinal[w] = o
                works[i] = o
                self._rows_per_ordinal[o] += 1
            self._live_rows += m
            self._tail.append(enc, scales, works, meta)
            self._publish()

    def remove(self, work_id: WorkId) -> int:
        """Removes every vector of ``work_id``; returns how many. Raises KeyError if absent."""
        with self._write_lock:
            o = self._ordinal.pop(work_id, None)
            if o is None:
                raise KeyError(f"work {work_id!r} is not in the index")
            removed = self._rows_per_ordinal[o]
            self._live_rows -= removed
            snap = self._snapshot
            self._snapshot = _Snapshot(snap.segments, snap.removed | {o}, self._live_rows, len(self._ordinal))
            return removed

    def _publish(self) -> None:  # requires the write lock
        old = self._snapshot
        segments = (*self._base, self._tail.view()) if self._tail.rows else self._base
        self._snapshot = _Snapshot(segments, old.removed, self._live_rows, len(self._ordinal))

    # -- searching ----------------------------------------------------------------------------

    def search(
        self,
        queries: npt.ArrayLike,
        k: int = 10,
        *,
        device: str = "auto",
        threads: int | None = None,
    ) -> list[list[Hit]]:
        """Best works for each query.

        Args:
            queries: ``[Q, D]`` or ``[D]`` float vectors.
            k: works per query (at most the number of works in the index).
            device: ``"cpu"``, ``"cuda"``/``"cuda:N"``, or ``"auto"`` (the GPU when one is usable
                and the catalog takes at most half its memory). On a GPU the vectors are
                mirrored in device memory on first use and reused; rows added later are
                uploaded again (only the in-memory tail, not a loaded file's rows).
            threads: CPU threads (default: all this process may use).

        Returns:
            For each query a list of up to k :class:`Hit` ``(work_id, score, metadata)``, best
            first (largest inner product, or smallest squared L2 distance), ties to the work
            whose best vector was added first.

        Raises:
            ValueError for an empty index, bad k or dimension mismatch; NonFiniteError for NaN/Inf.
        """
        snap = self._snapshot
        q, _ = as_queries(queries)
        if q.shape[1] != self._dim:
            raise ValueError(f"dimension mismatch: queries have D={q.shape[1]}, the index has D={self._dim}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer (got {k!r})")
        if snap.live_works == 0:
            raise ValueError("the index is empty: add reference vectors before searching")
        k_works = min(int(k), snap.live_works)
        kind, device_id = self._resolve_device(device, snap)
        n_threads = check_threads(threads)
        max_rows = cuda_max_k() if kind == "cuda" else CPU_MAX_K
        total_rows = sum(s.rows for s in snap.segments)
        removed = np.fromiter(snap.removed, np.int64, len(snap.removed))
        # Enough rows for k distinct works when works have the average number of vectors;
        # doubled for the queries that still fall short.
        rows_k = min(total_rows, max(2 * k_works, k_works * math.ceil(total_rows / snap.live_works)))
        results: list[list[Hit] | None] = [None] * q.shape[0]
        pending = np.arange(q.shape[0])
        while pending.size:
            if rows_k > max_rows and rows_k < total_rows:
                raise ValueError(
                    f"finding {k_works} distinct works needs more than {max_rows} candidate vectors; "
                    "lower k or remove duplicate vectors"
                )
            scores, seg_idx, rows = self._top_rows(snap, q[pending], rows_k, kind, device_id, n_threads)
            still = []
            for j, qi in enumerate(pending):
                hits = self._aggregate(snap, scores[j], seg_idx[j], rows[j], removed, k_works)
                if len(hits) == k_works or rows_k >= total_rows:
                    results[qi] = hits
                else:
                    still.append(qi)
            pending = np.asarray(still, dtype=np.int64)
            rows_k = min(total_rows, 2 * rows_k)
        return results  # type: ignore[return-value]

    def _resolve_device(self, device: str, snap: _Snapshot) -> tuple[str, int]:
        kind, device_id = parse_device(device)
        if kind != "auto":
            return kind, device_id
        if not _native.cuda_available():
            return "cpu", 0
        nbytes = sum(
            s.vectors.nbytes + (s.scales.nbytes if s.scales is not None else 0) for s in snap.segments
        )
        total = int(_native.cuda.device_info(0)["total_memory"])  # type: ignore[union-attr]
        return ("cuda", 0) if nbytes <= _AUTO_GPU_MEMORY_SHARE * total else ("cpu", 0)

    def _device_arrays(self, seg: _Segment, device_id: int) -> tuple[Any, Any]:
        """The segment's vectors (and scales) in GPU memory, uploaded once per segment."""
        key = (id(seg), device_id)
        with self._mirror_lock:
            cached = self._mirrors.get(key)
            if cached is not None and cached[0] is seg:
                return cached[1], cached[2]
            # Forget mirrors of segments the index no longer holds (a search still running on
            # an older snapshot keeps its arrays alive through its own references).
            live = {id(s) for s in self._snapshot.segments}
            for stale in [k for k in self._mirrors if k[0] not in live]:
                del self._mirrors[stale]
            cuda = require_cuda(device_id)
            vectors = cuda.DeviceArray.from_host(np.ascontiguousarray(seg.vectors), device_id)
            scales = cuda.DeviceArray.from_host(seg.scales, device_id) if seg.scales is not None else None
            self._mirrors[key] = (seg, vectors, scales)
            logger.info(
                "mirrored %d reference vectors on cuda:%d (%d bytes)", seg.rows, device_id, vectors.nbytes
            )
            return vectors, scales

    def _top_rows(
        self, snap: _Snapshot, q: np.ndarray, rows_k: int, kind: str, device_id: int, threads: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Best rows over all segments: (scores, segment number, row in segment), each [Q, m].

        Calls the kernels directly: the index's arrays were validated when added or loaded.
        """
        parts_s, parts_g, parts_r = [], [], []
        for g, seg in enumerate(snap.segments):
            kk = min(rows_k, seg.rows)
            if kind == "cuda":
                vectors, scales = self._device_arrays(seg, device_id)
                s, r = topk_cuda(q, vectors, scales, kk, self._metric, device_id)
            else:
                s, r = topk_cpu(q, seg.vectors, seg.scales, kk, self._metric, threads)
            parts_s.append(s)
            parts_r.append(r)
            parts_g.append(np.full_like(r, g))
        scores = np.concatenate(parts_s, axis=1)
        segs = np.concatenate(parts_g, axis=1)
        rows = np.concatenate(parts_r, axis=1)
        if len(snap.segments) > 1:
            # Order across segments: best score first, then earlier segment, then lower row.
            key = -scores if self._metric == "ip" else scores
            order = np.lexsort((rows, segs, key), axis=1)
            scores = np.take_along_axis(scores, order, 1)
            segs = np.take_along_axis(segs, order, 1)
            rows = np.take_along_axis(rows, order, 1)
        return scores, segs, rows

    def _aggregate(
        self,
        snap: _Snapshot,
        scores: np.ndarray,
        segs: np.ndarray,
        rows: np.ndarray,
        removed: np.ndarray,
        k_works: int,
    ) -> list[Hit]:
        works = np.empty(rows.shape[0], np.int64)
        for g, seg in enumerate(snap.segments):
            sel = segs == g
            works[sel] = seg.works[rows[sel]]
        live = ~np.isin(works, removed) if removed.size else np.ones(works.shape, bool)
        positions = np.flatnonzero(live)
        _, first = np.unique(works[positions], return_index=True)
        best = np.sort(positions[first])[:k_works]
        return [
            Hit(
                self._work_ids[int(works[i])],
                float(scores[i]),
                snap.segments[int(segs[i])].metadata(int(rows[i])),
            )
            for i in best
        ]

    # -- persistence --------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the index to ``path`` atomically (temp file + fsync + rename), compacting removals.

        Readers and writers may keep working meanwhile; the file holds one consistent snapshot.
        Memory use stays bounded: vectors and metadata are streamed in chunks of rows.
        """
        snap = self._snapshot
        n_ordinals = len(self._work_ids)
        removed = np.fromiter(snap.removed, np.int64, len(snap.removed))
        keep = [~np.isin(seg.works, removed) if removed.size else None for seg in snap.segments]
        counts = np.zeros(n_ordinals, np.int64)
        for seg in snap.segments:
            counts += np.bincount(seg.works, minlength=n_ordinals)
        counts[removed] = 0
        live_ordinals = np.flatnonzero(counts)
        renumber = np.full(n_ordinals, -1, np.int64)
        renumber[live_ordinals] = np.arange(live_ordinals.size)
        n = int(counts.sum())
        parts = list(zip(snap.segments, keep))

        def chunks(arr_of: str) -> Iterator[np.ndarray]:
            for seg, mask in parts:
                arr = getattr(seg, arr_of)
                for start in range(0, seg.rows, _SAVE_CHUNK_ROWS):
                    chunk = arr[start : start + _SAVE_CHUNK_ROWS]
                    yield chunk if mask is None else chunk[mask[start : start + _SAVE_CHUNK_ROWS]]

        # Metadata: lengths first (for the offsets section), then the bytes, both streamed.
        lengths: list[np.ndarray] = []
        for seg, mask in parts:
            seg_len: np.ndarray
            if seg.meta_json is not None:
                seg_len = np.fromiter(
                    (len(seg.meta_json[i].encode()) for i in range(seg.rows)), np.int64, seg.rows
                )
            else:
                assert seg.meta_offsets is not None
                seg_len = np.diff(seg.meta_offsets.astype(np.int64))
            lengths.append(seg_len if mask is None else seg_len[mask])
        offsets = np.zeros(n + 1, np.uint64)
        offsets[1:] = np.cumsum(np.concatenate(lengths) if lengths else np.empty(0, np.int64))

        def meta_chunks() -> Iterator[np.ndarray]:
            for seg, mask in parts:
                rows = np.arange(seg.rows) if mask is None else np.flatnonzero(mask)
                for start in range(0, rows.size, _SAVE_CHUNK_ROWS):
                    blob = b"".join(seg.metadata_bytes(rows[start : start + _SAVE_CHUNK_ROWS]))
                    yield np.frombuffer(blob, np.uint8)

        work_ids = json.dumps([self._work_ids[int(o)] for o in live_ordinals]).encode()
        with index_format.atomic_writer(path) as w:
            w.write_array("vectors", self._dtype, (n, self._dim), chunks("vectors"))
            if self._dtype == np.int8:
                w.write_array("scales", np.dtype(np.float32), (n,), chunks("scales"))
            w.write_array("row_work", np.dtype(np.int64), (n,), (renumber[c] for c in chunks("works")))
            w.write_bytes("work_ids", work_ids)
            w.write_array("meta_offsets", np.dtype(np.uint64), (n + 1,), [offsets])
            w.write_array("meta_blob", np.dtype(np.uint8), (int(offsets[-1]),), meta_chunks())
            w.finish(
                {
                    "format": "csi.reference_index",
                    "format_version": index_format.FORMAT_VERSION,
                    "library_version": __version__,
                    "dim": self._dim,
                    "dtype": self._dtype_name,
                    "metric": self._metric,
                    "model_id": self._model_id,
                    "count": n,
                    "num_works": int(live_ordinals.size),
                    "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
                }
            )
        logger.info("saved reference index: %d vectors, %d works -> %s", n, live_ordinals.size, path)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, mmap: bool = False, verify: bool | None = None
    ) -> ReferenceIndex:
        """Loads an index saved by :meth:`save`.

        Args:
            mmap: map the vectors from the file instead of reading them (catalogs larger than RAM;
                the file must stay in place while the index is used).
            verify: check every section's checksum. Default: True without mmap; with mmap, all
                sections but the vectors are checked (checking them would read the whole file;
                pass True to do it, or use :meth:`verify_file`).

        Raises:
            IndexFileError: missing, truncated, corrupt or foreign file, or unsupported version.
        """
        p = Path(path)
        if not p.exists():
            raise IndexFileError(f"{p}: no such index file")
        if verify is None:
            verify = not mmap
        f = index_format.open_index_file(p, mmap=mmap, verify=None if verify else _ALWAYS_VERIFIED)
        h = f.header
        try:
            dim, count, num_works = int(h["dim"]), int(h["count"]), int(h["num_works"])
            dtype, metric = str(h["dtype"]), str(h["metric"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFileError(f"{p}: header is missing or has a bad field ({exc})") from None
        if dtype not in STORAGE or metric not in METRICS or dim < 1 or count < 0 or num_works < 0:
            raise IndexFileError(f"{p}: unsupported dtype/metric or bad sizes in header")
        model_id = h.get("model_id")  # absent in files saved before model ids were recorded
        if model_id is not None and (not isinstance(model_id, str) or not model_id.strip()):
            raise IndexFileError(f"{p}: header field model_id must be a non-empty string or null")
        required = ["vectors", "row_work", "work_ids", "meta_offsets", "meta_blob"] + (
            ["scales"] if dtype == "int8" else []
        )
        missing = [s for s in required if s not in f.arrays]
        if missing:
            raise IndexFileError(f"{p}: missing sections {missing}")
        a = f.arrays
        expect = {
            "vectors": ((count, dim), STORAGE[dtype]),
            "row_work": ((count,), np.dtype(np.int64)),
            "meta_offsets": ((count + 1,), np.dtype(np.uint64)),
        }
        if dtype == "int8":
            expect["scales"] = ((count,), np.dtype(np.float32))
        for name, (shape, dt) in expect.items():
            if a[name].shape != shape or a[name].dtype != dt:
                raise IndexFileError(
                    f"{p}: section {name!r} has shape {a[name].shape} {a[name].dtype}, expected {shape} {dt}"
                )
        try:
            work_ids = json.loads(bytes(a["work_ids"]))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IndexFileError(f"{p}: work id table is not valid JSON ({exc})") from None
        if not isinstance(work_ids, list) or len(work_ids) != num_works:
            raise IndexFileError(f"{p}: work id table does not list {num_works} works")
        if (
            any(isinstance(w, bool) or not isinstance(w, (str, int)) for w in work_ids)
            or len(set(work_ids)) != num_works
        ):
            raise IndexFileError(f"{p}: work id table holds invalid or duplicate ids")
        row_work = np.asarray(a["row_work"])
        if count and (row_work.min() < 0 or row_work.max() >= num_works):
            raise IndexFileError(f"{p}: rows refer to works outside the work table")
        offsets = a["meta_offsets"]
        if offsets[0] != 0 or offsets[-1] != a["meta_blob"].shape[0]:
            raise IndexFileError(f"{p}: metadata offsets do not span the metadata blob")
        if dtype == "int8":
            sc = a["scales"]
            if not np.isfinite(sc).all() or (sc < 0).any():
                raise IndexFileError(f"{p}: int8 scales hold NaN/Inf or negative values")

        index = cls(dim, dtype=dtype, metric=metric, model_id=model_id)
        per_work = np.bincount(row_work, minlength=num_works) if count else np.zeros(num_works, np.int64)
        index._work_ids = list(work_ids)
        index._ordinal = {w: i for i, w in enumerate(work_ids)}
        index._rows_per_ordinal = [int(c) for c in per_work]
        index._live_rows = count
        if count:
            index._base = (
                _Segment(
                    vectors=a["vectors"],
                    scales=a["scales"] if dtype == "int8" else None,
                    works=row_work,
                    meta_json=None,
                    meta_offsets=offsets,
                    meta_blob=a["meta_blob"],
                ),
            )
        with index._write_lock:
            index._publish()
        logger.info(
            "loaded reference index %s: %d vectors, %d works, model %s (mmap=%s)",
            p,
            count,
            num_works,
            model_id,
            mmap,
        )
        return index

    @staticmethod
    def verify_file(path: str | os.PathLike[str]) -> dict[str, Any]:
        """Checks every checksum and structural rule of an index file; returns its header.

        Raises IndexFileError describing the first problem found.
        """
        index = ReferenceIndex.load(path, mmap=True, verify=True)
        return {
            "dim": index.dim,
            "dtype": index.dtype,
            "metric": index.metric,
            "model_id": index.model_id,
            "count": len(index),
            "num_works": index.num_works,
            **index_format.read_footer(path)[0],
        }

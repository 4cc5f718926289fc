"""ReferenceIndex: search against brute force, removal, persistence, corruption and bad input."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from csi_runtime import Hit, IndexFileError, NonFiniteError, ReferenceIndex, quantize_int8
from csi_runtime import index_format as fmt

from reference import dense_refs, scores_f64, tolerance

DTYPES = ["float32", "float16", "int8"]
METRICS = ["ip", "l2"]


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class Catalog:
    """What the test added, kept independently of the index: the oracle for searches."""

    def __init__(self, dtype: str, d: int) -> None:
        self.dtype, self.d = dtype, d
        self.vectors: list[np.ndarray] = []  # stored values (float64)
        self.works: list[object] = []
        self.meta: list[dict] = []
        self.removed: set[object] = set()

    def stored(self, x: np.ndarray) -> np.ndarray:
        if self.dtype == "float16":
            return x.astype(np.float16).astype(np.float64)
        if self.dtype == "int8":
            return dense_refs(*quantize_int8(x))
        return x.astype(np.float64)

    def add(self, index: ReferenceIndex, x: np.ndarray, works: list, meta: list[dict]) -> None:
        index.add(x, works, meta)
        self.vectors.extend(self.stored(x))
        self.works.extend(works)
        self.meta.extend(meta)

    def expected(
        self, q: np.ndarray, k: int, metric: str
    ) -> tuple[list[object], np.ndarray, np.ndarray, list]:
        refs = np.asarray(self.vectors)
        full = scores_f64(q[None, :], refs, metric)[0]
        tol = float(tolerance(q[None, :], refs, metric)[0, 0])
        order = np.lexsort((np.arange(len(full)), -full))
        seen, works, scores, rows = set(), [], [], []
        for r in order:
            w = self.works[r]
            if w in self.removed or w in seen:
                continue
            seen.add(w)
            works.append(w)
            scores.append(full[r])
            rows.append(r)
        return works, np.asarray(scores), np.asarray([tol]), rows


def check_hits(hits: list[Hit], cat: Catalog, q: np.ndarray, k: int, metric: str) -> None:
    works, scores, tol, rows = cat.expected(q, k, metric)
    k_eff = min(k, len(works))
    assert len(hits) == k_eff
    got_scores = np.array([h.score if metric == "ip" else -h.score for h in hits])
    np.testing.assert_allclose(got_scores, scores[:k_eff], atol=tol[0], rtol=0)
    kth = scores[k_eff - 1]
    clearly_in = {w for w, s in zip(works, scores) if s > kth + tol[0]}
    assert clearly_in <= {h.work_id for h in hits}
    assert len({h.work_id for h in hits}) == k_eff, "a work appears twice"
    for h in hits:
        assert h.work_id not in cat.removed
        i = works.index(h.work_id)
        if abs(scores[i] - (scores[i + 1] if i + 1 < len(scores) else -np.inf)) > tol[0]:
            # Unambiguous best vector of this work: its metadata must be the one returned.
            assert h.metadata == cat.meta[rows[i]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", METRICS)
def test_search_matches_brute_force(
    rng: np.random.Generator, dtype: str, metric: str, tmp_path: Path
) -> None:
    d = 48
    index = ReferenceIndex(d, dtype=dtype, metric=metric)
    cat = Catalog(dtype, d)
    # Works get 1..6 versions, added over several calls (interleaved works).
    for batch in range(4):
        n = int(rng.integers(50, 200))
        works = [f"w{int(w)}" for w in rng.integers(0, 120, n)]
        meta = [{"batch": batch, "row": int(i), "title": f"Tïtle {w} ♪"} for i, w in enumerate(works)]
        cat.add(index, unit(rng, n, d), works, meta)
    assert len(index) == len(cat.vectors)
    assert index.num_works == len(set(cat.works))
    queries = unit(rng, 25, d)
    for k in (1, 5, 40):
        for q, hits in zip(queries, index.search(queries, k)):
            check_hits(hits, cat, q, k, metric)
    # Removal, then queries aimed exactly at a removed work's vectors.
    victims = list(dict.fromkeys(cat.works))[:7]
    for w in victims:
        assert index.remove(w) == cat.works.count(w)
        cat.removed.add(w)
    aimed = np.asarray([cat.vectors[cat.works.index(w)] for w in victims], np.float32)
    for q, hits in zip(aimed, index.search(aimed, 10)):
        check_hits(hits, cat, q, 10, metric)
    # Round trip, with and without mmap: identical answers.
    path = tmp_path / "cat.csi"
    index.save(path)
    for mmap in (False, True):
        loaded = ReferenceIndex.load(path, mmap=mmap)
        assert (loaded.dim, loaded.dtype, loaded.metric) == (d, dtype, metric)
        assert len(loaded) == len(index) and loaded.num_works == index.num_works
        assert sorted(map(str, loaded.work_ids())) == sorted(map(str, index.work_ids()))
        for a, b in zip(index.search(queries, 10), loaded.search(queries, 10)):
            assert [h.work_id for h in a] == [h.work_id for h in b]
            assert [h.metadata for h in a] == [h.metadata for h in b]
            np.testing.assert_array_equal([h.score for h in a], [h.score for h in b])


def test_a_work_appears_once_with_its_best_version(rng: np.random.Generator) -> None:
    d = 16
    index = ReferenceIndex(d, dtype="float32")
    base = unit(rng, 1, d)[0]
    versions = np.stack([base * s for s in (0.5, 0.9, 0.7)])  # same direction, different scores
    index.add(versions, "song", [{"v": "studio"}, {"v": "live"}, {"v": "remix"}])
    index.add(unit(rng, 30, d) * 0.1, [f"other{i}" for i in range(30)])
    hits = index.search(base, 3)[0]
    assert hits[0].work_id == "song"
    assert hits[0].metadata == {"v": "live"}
    assert hits[0].score == pytest.approx(0.9, rel=1e-6)
    assert [h.work_id for h in hits].count("song") == 1


def test_many_versions_per_work_still_yields_k_distinct_works(rng: np.random.Generator) -> None:
    # One work owns most vectors and all the best ones: the search must widen until it has k works.
    d = 8
    index = ReferenceIndex(d, dtype="float32")
    q = unit(rng, 1, d)[0]
    index.add(np.tile(q, (5000, 1)) * 0.99, "dominant")
    index.add(unit(rng, 20, d) * 0.5, [f"w{i}" for i in range(20)])
    hits = index.search(q, 5)[0]
    assert hits[0].work_id == "dominant"
    assert len(hits) == 5 and len({h.work_id for h in hits}) == 5


def test_k_larger_than_the_catalog_returns_every_work(rng: np.random.Generator) -> None:
    index = ReferenceIndex(8)
    index.add(unit(rng, 6, 8), ["a", "a", "b", "c", "c", "c"])
    hits = index.search(unit(rng, 2, 8), 50)
    assert [len(h) for h in hits] == [3, 3]


def test_work_ids_keep_their_type_and_metadata_survives(rng: np.random.Generator, tmp_path: Path) -> None:
    index = ReferenceIndex(8, dtype="float32")
    x = unit(rng, 3, 8)
    meta = [
        {"title": "Nuages", "nested": {"list": [1, 2.5, None], "ok": True}},
        None,
        {"isrc": "FR-Z03-14-00001"},
    ]
    index.add(x, [7, "7", 10**12], meta)
    index.save(tmp_path / "t.csi")
    loaded = ReferenceIndex.load(tmp_path / "t.csi")
    for i in range(3):
        top = loaded.search(x[i], 1)[0][0]
        assert top.work_id == [7, "7", 10**12][i]
        assert type(top.work_id) is type([7, "7", 10**12][i])
        assert top.metadata == (meta[i] or {})
    assert 7 in loaded and "7" in loaded and 8 not in loaded


def test_remove_then_re_add(rng: np.random.Generator, tmp_path: Path) -> None:
    index = ReferenceIndex(8)
    x = unit(rng, 4, 8)
    index.add(x[:2], "a")
    index.add(x[2:], "b")
    assert index.remove("a") == 2
    with pytest.raises(KeyError, match="'a' is not in the index"):
        index.remove("a")
    assert "a" not in index and len(index) == 2 and index.num_works == 1
    index.add(x[0], "a", {"new": True})
    hits = index.search(x[1], 2)[0]  # the old "a" vector x[1] is gone for good
    assert {h.work_id for h in hits} == {"a", "b"}
    assert next(h for h in hits if h.work_id == "a").metadata == {"new": True}
    index.save(tmp_path / "r.csi")
    loaded = ReferenceIndex.load(tmp_path / "r.csi")
    assert len(loaded) == 3 and loaded.num_works == 2


def test_mmap_index_accepts_writes_and_can_overwrite_its_own_file(
    rng: np.random.Generator, tmp_path: Path
) -> None:
    path = tmp_path / "m.csi"
    index = ReferenceIndex(32, dtype="int8")
    x = unit(rng, 500, 32)
    index.add(x, [i // 5 for i in range(500)])
    index.save(path)
    mapped = ReferenceIndex.load(path, mmap=True)
    mapped.add(unit(rng, 10, 32), "late")
    mapped.remove(3)
    before = mapped.search(x[:20], 5)
    mapped.save(path)  # replaces the file it is mapping: the old inode stays valid for it
    after_same = mapped.search(x[:20], 5)
    reloaded = ReferenceIndex.load(path)
    assert len(reloaded) == 505 and reloaded.num_works == 100
    for a, b, c in zip(before, after_same, reloaded.search(x[:20], 5)):
        assert [h.work_id for h in a] == [h.work_id for h in b] == [h.work_id for h in c]


def test_empty_index(tmp_path: Path) -> None:
    index = ReferenceIndex(4)
    with pytest.raises(ValueError, match="the index is empty"):
        index.search(np.ones(4, np.float32))
    index.save(tmp_path / "e.csi")
    loaded = ReferenceIndex.load(tmp_path / "e.csi")
    assert len(loaded) == 0 and loaded.num_works == 0
    with pytest.raises(ValueError, match="the index is empty"):
        loaded.search(np.ones(4, np.float32))
    index.add(np.ones((1, 4)), "x")
    index.remove("x")
    with pytest.raises(ValueError, match="the index is empty"):
        index.search(np.ones(4, np.float32))


def test_bad_input_changes_nothing(rng: np.random.Generator) -> None:
    index = ReferenceIndex(8, dtype="float16")
    index.add(unit(rng, 2, 8), ["a", "b"])
    x = unit(rng, 3, 8)
    cases = [
        (lambda: index.add(x[:, :7], "w"), ValueError, r"shape \[N, 8\]"),
        (lambda: index.add(x.astype(np.int32), "w"), TypeError, "floating point"),
        (lambda: index.add(x, ["w", "v"]), ValueError, "2 work ids for 3 vectors"),
        (lambda: index.add(x, [1.5, 2, 3]), TypeError, "work ids must be str or int"),
        (lambda: index.add(x, [True, 2, 3]), TypeError, "work ids must be str or int"),
        (lambda: index.add(x, "w", [{}, {}]), ValueError, "2 metadata entries for 3 vectors"),
        (lambda: index.add(x, "w", {"bad": {1, 2}}), ValueError, "not JSON-serialisable"),
        (lambda: index.add(x, "w", {"bad": float("nan")}), ValueError, "not JSON-serialisable"),
        (lambda: index.add(x, "w", ["notadict", {}, {}]), TypeError, "must be a dict"),
        (lambda: index.add(x * 1e6, "w"), ValueError, "float16 range"),
    ]
    bad = x.copy()
    bad[1, 2] = np.nan
    cases.append((lambda: index.add(bad, "w"), NonFiniteError, "row 1 contains NaN"))
    for call, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            call()
    assert len(index) == 2 and index.num_works == 2 and "w" not in index
    with pytest.raises(ValueError, match="dimension mismatch"):
        index.search(x[:, :4])
    with pytest.raises(NonFiniteError, match="queries row 1"):
        index.search(bad)
    for k in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            index.search(x, k)  # type: ignore[arg-type]
    for args in ({"dim": 0}, {"dim": 8, "dtype": "float64"}, {"dim": 8, "metric": "cos"}):
        with pytest.raises(ValueError, match="must be"):
            ReferenceIndex(**args)  # type: ignore[arg-type]


# -- file damage ---------------------------------------------------------------------------------


@pytest.fixture
def saved(rng: np.random.Generator, tmp_path: Path) -> tuple[Path, ReferenceIndex]:
    index = ReferenceIndex(16, dtype="int8", metric="l2")
    index.add(unit(rng, 300, 16), [f"w{i % 40}" for i in range(300)], [{"i": i} for i in range(300)])
    path = tmp_path / "good.csi"
    index.save(path)
    return path, index


def test_truncation_anywhere_is_detected(saved: tuple[Path, ReferenceIndex], tmp_path: Path) -> None:
    path, _ = saved
    data = path.read_bytes()
    cuts = sorted(
        {
            0,
            1,
            7,
            8,
            12,
            63,
            64,
            65,
            len(data) // 3,
            len(data) // 2,
            len(data) - 33,
            len(data) - 32,
            len(data) - 31,
            len(data) - 1,
            *range(0, len(data), max(1, len(data) // 40)),
        }
    )
    for cut in cuts:
        bad = tmp_path / "cut.csi"
        bad.write_bytes(data[:cut])
        for mmap in (False, True):
            with pytest.raises(IndexFileError):
                ReferenceIndex.load(bad, mmap=mmap)


def test_damage_in_each_section_is_detected(saved: tuple[Path, ReferenceIndex], tmp_path: Path) -> None:
    path, _ = saved
    _footer, sections = fmt.read_footer(path)
    data = bytearray(path.read_bytes())
    for name, spec in sections.items():
        if spec.nbytes == 0:
            continue
        for where in (spec.offset, spec.offset + spec.nbytes // 2, spec.offset + spec.nbytes - 1):
            bad = bytearray(data)
            bad[where] ^= 0x5A
            p = tmp_path / f"bad-{name}.csi"
            p.write_bytes(bytes(bad))
            with pytest.raises(IndexFileError, match=f"checksum mismatch in section '{name}'"):
                ReferenceIndex.load(p)
            with pytest.raises(IndexFileError, match=f"checksum mismatch in section '{name}'"):
                ReferenceIndex.verify_file(p)
            if name == "vectors":
                ReferenceIndex.load(p, mmap=True)  # mmap skips the big section's checksum by default
                with pytest.raises(IndexFileError):
                    ReferenceIndex.load(p, mmap=True, verify=True)
            else:
                with pytest.raises(IndexFileError):
                    ReferenceIndex.load(p, mmap=True)
    # Damage in the footer itself.
    foot_at = len(data) - fmt.TRAILER.size - 10
    bad = bytearray(data)
    bad[foot_at] ^= 0x01
    (tmp_path / "foot.csi").write_bytes(bytes(bad))
    with pytest.raises(IndexFileError, match="footer checksum"):
        ReferenceIndex.load(tmp_path / "foot.csi")


def test_foreign_and_future_files(saved: tuple[Path, ReferenceIndex], tmp_path: Path) -> None:
    path, _ = saved
    cases = {
        "empty.csi": b"",
        "text.csi": b"hello world\n" * 100,
        "npy.csi": b"\x93NUMPY\x01\x00" + b"\0" * 200,
        "random.csi": np.random.default_rng(0).bytes(5000),
    }
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(IndexFileError, match=r"not a csi reference index|truncated"):
            ReferenceIndex.load(tmp_path / name)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 8, fmt.FORMAT_VERSION + 1)
    (tmp_path / "future.csi").write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="newer than this csi supports"):
        ReferenceIndex.load(tmp_path / "future.csi")
    with pytest.raises(IndexFileError, match="no such index file"):
        ReferenceIndex.load(tmp_path / "missing.csi")
    with pytest.raises(IndexFileError):
        ReferenceIndex.load(tmp_path)  # a directory


def test_structurally_wrong_footer_is_rejected(saved: tuple[Path, ReferenceIndex], tmp_path: Path) -> None:
    """A footer with a valid checksum but inconsistent content (hand-edited or buggy writer)."""
    path, _ = saved
    data = path.read_bytes()
    foff, flen, _, version, end = fmt.TRAILER.unpack(data[-fmt.TRAILER.size :])
    footer = json.loads(data[foff : foff + flen])

    def rewrite(mutate) -> Path:  # type: ignore[no-untyped-def]
        f = json.loads(json.dumps(footer))
        mutate(f)
        blob = json.dumps(f).encode()
        import zlib

        out = data[:foff] + blob + fmt.TRAILER.pack(foff, len(blob), zlib.crc32(blob), version, end)
        p = tmp_path / "edited.csi"
        p.write_bytes(out)
        return p

    mutations = [
        lambda f: f["sections"]["vectors"].update(offset=10**12),
        lambda f: f["sections"]["vectors"].update(shape=[1, 1]),
        lambda f: f["sections"]["row_work"].update(dtype="object"),
        lambda f: f.update(count=f["count"] + 1),
        lambda f: f.update(num_works=3),
        lambda f: f.update(dtype="bfloat16"),
        lambda f: f.pop("dim"),
        lambda f: f["sections"].pop("meta_blob"),
        lambda f: f.update(format="something.else"),
    ]
    for mutate in mutations:
        with pytest.raises(IndexFileError):
            ReferenceIndex.load(rewrite(mutate))


def test_save_refuses_a_directory_and_leaves_no_temp_files(
    saved: tuple[Path, ReferenceIndex], tmp_path: Path
) -> None:
    _, index = saved
    (tmp_path / "dir.csi").mkdir()
    with pytest.raises(IsADirectoryError):
        index.save(tmp_path / "dir.csi")
    index.save(tmp_path / "sub" / "new.csi")
    assert not [p for p in tmp_path.rglob(".*tmp*")]

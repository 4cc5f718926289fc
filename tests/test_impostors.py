"""Impostor normalisation (csi_runtime.impostors): the means against a float64 reference at several
sizes, the normalised scores and their order, the bundle file (written by
csi_training.impostor_set from real audio, loaded, damaged), and the Monitor using it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from csi_runtime.bundle import BundleError
from csi_runtime.impostors import (
    IMPOSTORS_FILE,
    MANIFEST_KEY,
    META_KEY,
    ImpostorError,
    ImpostorSet,
    check_index_has_means,
    load_impostors,
)
from csi_runtime.index import Hit, ReferenceIndex


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def naive_means(queries: np.ndarray, impostors: np.ndarray, top: int) -> np.ndarray:
    sims = queries.astype(np.float64) @ impostors.astype(np.float64).T
    return np.array([np.mean(sorted(row, reverse=True)[:top]) for row in sims])


@pytest.mark.parametrize(("n_imp", "dim", "top"), [(1, 8, 1), (7, 16, 7), (300, 64, 20), (1798, 256, 20)])
def test_means_match_a_float64_reference(rng: np.random.Generator, n_imp: int, dim: int, top: int) -> None:
    imp = unit(rng, n_imp, dim)
    queries = unit(rng, int(rng.integers(1, 40)), dim)
    got = ImpostorSet(imp.astype(np.float16), top=top).means(queries, threads=1)
    # float16 storage is part of the contract: compare with the vectors the set holds
    want = naive_means(queries, imp.astype(np.float16), top)
    np.testing.assert_allclose(got, want, atol=2e-6)
    one = ImpostorSet(imp, top=top).means(queries[0])
    np.testing.assert_allclose(one, naive_means(queries[:1], imp, top), atol=2e-6)
    assert ImpostorSet(imp, top=top).means(np.zeros((0, dim), np.float32)).shape == (0,)


def test_bad_sets_and_inputs_are_refused(rng: np.random.Generator) -> None:
    imp = unit(rng, 10, 8)
    bad = imp.copy()
    bad[3, 2] = np.nan
    for kwargs, message in [
        ({"vectors": bad, "top": 3}, "NaN"),
        ({"vectors": imp, "top": 11}, "top must be"),
        ({"vectors": imp, "top": 0}, "top must be"),
        ({"vectors": imp.astype(np.int8), "top": 3}, "float16 or float32"),
        ({"vectors": imp[0]}, "non-empty"),
        ({"vectors": imp, "top": 3, "query_weight": -1.0}, "query_weight"),
    ]:
        with pytest.raises(ImpostorError, match=message):
            ImpostorSet(**kwargs)
    with pytest.raises(ImpostorError, match=r"\[N, 8\]"):
        ImpostorSet(imp, top=3).means(unit(rng, 2, 9))


def test_normalize_applies_the_formula_and_reorders(rng: np.random.Generator) -> None:
    imp = ImpostorSet(unit(rng, 50, 8), top=5, query_weight=0.3, reference_weight=0.7)
    hits = [
        [Hit("a", 0.9, {META_KEY: 0.5}), Hit("b", 0.8, {META_KEY: 0.1}), Hit("c", 0.7, {META_KEY: 0.2})],
        [Hit("c", 0.6, {META_KEY: 0.2, "start_s": 3.0})],
    ]
    out = imp.normalize(hits, [0.2, 0.4])
    # a: 0.9-0.06-0.35=0.49, b: 0.8-0.06-0.07=0.67, c: 0.7-0.06-0.14=0.50
    assert [h.work_id for h in out[0]] == ["b", "c", "a"]
    np.testing.assert_allclose([h.score for h in out[0]], [0.67, 0.50, 0.49], atol=1e-12)
    assert out[1][0].metadata["start_s"] == 3.0 and out[1][0].score == pytest.approx(0.6 - 0.12 - 0.14)
    assert hits[0][0].score == 0.9  # inputs untouched
    with pytest.raises(ImpostorError, match="2 query means for 1 windows"):
        imp.normalize(hits[:1], [0.1, 0.2])
    with pytest.raises(ImpostorError, match="work 'x' has no 'impostor_mean'"):
        imp.normalize([[Hit("x", 0.5, {"start_s": 0.0})]], [0.1])


def test_check_index_has_means(rng: np.random.Generator) -> None:
    index = ReferenceIndex(8)
    with pytest.raises(ImpostorError, match="empty"):
        check_index_has_means(index)
    index.add(unit(rng, 2, 8), ["w", "w"], [{"start_s": 0.0}, {"start_s": 5.0}])
    with pytest.raises(ImpostorError, match="built without impostor means"):
        check_index_has_means(index, "cat.csi")
    with_means = ReferenceIndex(8)
    with_means.add(unit(rng, 1, 8), ["w"], [{META_KEY: 0.1}])
    check_index_has_means(with_means)


def test_pick_recordings_draws_one_recording_of_distinct_works() -> None:
    from types import SimpleNamespace

    from csi_training.impostor_set import pick_recordings

    entries = [SimpleNamespace(work_id=f"w{w}", path=f"w{w}_{v}.flac") for w in range(30) for v in range(3)]
    picked = pick_recordings(entries, 12, seed=5)
    assert len(picked) == 12 and len({e.work_id for e in picked}) == 12
    assert [e.path for e in picked] == [e.path for e in pick_recordings(entries, 12, seed=5)]  # seeded
    assert [e.path for e in picked] != [e.path for e in pick_recordings(entries, 12, seed=6)]
    assert len(pick_recordings(entries, 100, seed=0)) == 30  # all works when there are fewer
    with pytest.raises(ValueError, match="positive integer"):
        pick_recordings(entries, 0, seed=0)
    with pytest.raises(ValueError, match="no recordings"):
        pick_recordings([], 3, seed=0)


# -- the bundle file, built from real audio -----------------------------------------------------------

sf = pytest.importorskip("soundfile")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def bundle_with_impostors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the packaged bundle whose impostor set is rebuilt from 6 works of noisy tones."""
    from csi_runtime.embedder import default_bundle_path
    from csi_training.impostor_set import add_impostor_set

    root = tmp_path_factory.mktemp("impostors")
    bundle = root / "bundle"
    shutil.copytree(default_bundle_path(), bundle)
    rng = np.random.default_rng(7)
    rows = ["path,work_id"]
    sr = 16000
    for w in range(6):
        for v in range(2):
            t = np.arange(int(rng.uniform(25, 40) * sr)) / sr
            f0 = 110 * 2 ** (rng.integers(0, 24) / 12)
            x = 0.3 * np.sin(2 * np.pi * f0 * t * (1 + 0.1 * np.sin(t))) + 0.01 * rng.standard_normal(len(t))
            sf.write(root / f"w{w}_{v}.flac", x.astype(np.float32), sr)
            rows.append(f"w{w}_{v}.flac,work{w}")
    (root / "silent.wav").write_bytes(b"")  # unreadable: skipped, counted
    rows.append("silent.wav,work6")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    add_impostor_set(bundle, root / "train.csv", works=7, seed=3, hop_s=5.0, top=4, threads=1)
    return bundle


def test_the_builder_writes_a_set_that_loads(bundle_with_impostors: Path) -> None:
    from csi_runtime.bundle import load_bundle

    bundle = load_bundle(bundle_with_impostors)
    section = bundle.manifest[MANIFEST_KEY]
    assert section["top"] == 4 and section["source"]["seed"] == 3
    assert section["works"] + section["source"]["recordings_skipped"] == 7
    assert section["source"]["recordings_skipped"] == 1  # the empty file
    imp = load_impostors(bundle)
    assert imp is not None and imp.dim == bundle.dim and imp.windows == section["windows"] >= 6
    assert imp.sha256 == bundle.manifest["files"][IMPOSTORS_FILE]
    np.testing.assert_allclose(np.linalg.norm(imp.vectors, axis=1), 1.0, atol=2e-3)  # float16 unit rows
    assert np.load(bundle_with_impostors / IMPOSTORS_FILE, allow_pickle=False).dtype == np.float16


def test_damaged_impostor_files_are_refused(bundle_with_impostors: Path, tmp_path: Path) -> None:
    from csi_runtime.bundle import load_bundle

    copy = tmp_path / "b"
    shutil.copytree(bundle_with_impostors, copy)
    data = bytearray((copy / IMPOSTORS_FILE).read_bytes())
    data[-3] ^= 0xFF
    (copy / IMPOSTORS_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"impostors\.npy is corrupt or was modified"):
        load_bundle(copy)
    shutil.copy(bundle_with_impostors / IMPOSTORS_FILE, copy / IMPOSTORS_FILE)
    manifest = json.loads((copy / "model.json").read_text())
    manifest[MANIFEST_KEY]["windows"] += 1
    (copy / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"model\.json says"):
        load_impostors(load_bundle(copy))
    del manifest[MANIFEST_KEY]["top"]
    (copy / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="needs the keys"):
        load_impostors(load_bundle(copy))
    del manifest[MANIFEST_KEY]
    (copy / "model.json").write_text(json.dumps(manifest))
    assert load_impostors(load_bundle(copy)) is None


def test_catalog_windows_carry_their_means_and_the_monitor_uses_them(bundle_with_impostors: Path) -> None:
    from csi_runtime import Embedder
    from csi_runtime.catalog import add_recording
    from csi_runtime.monitor import Monitor

    embedder = Embedder(bundle_with_impostors, threads=1)
    imp = embedder.impostors
    assert imp is not None
    rng = np.random.default_rng(11)
    sr = embedder.sample_rate
    t = np.arange(30 * sr) / sr
    refs = {
        f"r{i}": (0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t * (1 + 0.05 * i * np.sin(t)))).astype(
            np.float32
        )
        for i in range(3)
    }
    index = ReferenceIndex(embedder.dim, model_id=embedder.model_id)
    for work, audio in refs.items():
        add_recording(embedder, index, work, audio, sr, hop_s=5.0, window_scales=(1.0,))
    rows = [(work, meta) for work, meta in index.iter_metadata()]
    vectors = np.concatenate([embedder.embed_segments(a, sr, hop_s=5.0).vectors for a in refs.values()])
    np.testing.assert_allclose([m[META_KEY] for _, m in rows], imp.means(vectors), atol=2e-6)
    bare = ReferenceIndex(embedder.dim, model_id=embedder.model_id)
    add_recording(embedder, bare, "r0", refs["r0"], sr, impostors=None)
    assert all(META_KEY not in m for _, m in bare.iter_metadata())
    with pytest.raises(ImpostorError, match="without impostor means"):
        Monitor(embedder, bare, channel="c", threshold=0.0, impostors=imp)
    # the monitor's window scores are the index's, normalised (threshold -inf: every window reports)
    seen: list[list[Hit]] = []
    monitor = Monitor(embedder, index, channel="c", threshold=-10.0, impostors=imp, k=3, min_windows=1,
                      hop_s=5.0)  # fmt: skip
    original = monitor._tracker.update

    def spy(start: float, end: float, hits: list[Hit], *, silent: bool = False) -> list[object]:
        seen.append(list(hits))
        return original(start, end, hits, silent=silent)

    monitor._tracker.update = spy  # type: ignore[method-assign]
    query = refs["r1"][: 25 * sr] + 0.01 * rng.standard_normal(25 * sr).astype(np.float32)
    monitor.push_audio(query)
    monitor.close()
    segs = embedder.embed_segments(query, sr, hop_s=5.0)
    want = imp.normalize(index.search(segs.vectors, k=3), imp.means(segs.vectors))
    assert len(seen) >= 1
    for got, expected in zip(seen, want):
        assert [h.work_id for h in got] == [h.work_id for h in expected]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in expected], atol=1e-4)

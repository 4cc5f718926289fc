"""Reference windows of several lengths (csi_runtime.catalog.REFERENCE_WINDOW_SCALES): each scale's
windows are the embedder's own windows of that length, named in their metadata; the CLI option."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
sf = pytest.importorskip("soundfile")

from csi_runtime import Embedder, ReferenceIndex  # noqa: E402
from csi_runtime.catalog import REFERENCE_WINDOW_SCALES, add_recording  # noqa: E402

SR = 16000


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(threads=1)


def chirps(rng: np.random.Generator, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    f = 110 * 2 ** (3 * (t / seconds) + rng.uniform(0, 1))
    x = np.sin(2 * np.pi * np.cumsum(f) / SR) + 0.3 * np.sin(2 * np.pi * 3 * np.cumsum(f) / SR)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


@pytest.mark.parametrize("seconds", [12.0, 45.0])
def test_each_scale_adds_the_embedders_windows_of_that_length(
    embedder: Embedder, rng: np.random.Generator, seconds: float
) -> None:
    audio = chirps(rng, seconds)
    hop = 5.0
    index = ReferenceIndex(embedder.dim)
    added = add_recording(embedder, index, "w", audio, SR, metadata={"title": "t"}, hop_s=hop)
    assert added == len(index)
    metas = [m for _, m in index.iter_metadata()]
    assert {m["title"] for m in metas} == {"t"}
    expected = 0
    for scale in REFERENCE_WINDOW_SCALES:
        window_s = round(embedder.window_s * scale, 3)
        segs = embedder.embed_segments(audio, SR, window_s=embedder.window_s * scale, hop_s=hop)
        mine = [m for m in metas if m["window_s"] == window_s]
        assert [m["start_s"] for m in mine] == [round(float(s), 3) for s in segs.starts[~segs.silent]]
        expected += int((~segs.silent).sum())
    assert added == expected
    # the scales are searched as one work: an excerpt matches its own work
    query = embedder.embed_segments(audio[: int(10 * SR)], SR).vectors
    assert index.search(query, k=1)[0][0].work_id == "w"


def test_one_scale_and_bad_scales(embedder: Embedder, rng: np.random.Generator) -> None:
    audio = chirps(rng, 30.0)
    index = ReferenceIndex(embedder.dim)
    n = add_recording(embedder, index, "w", audio, SR, hop_s=5.0, window_scales=(1.0,))
    segs = embedder.embed_segments(audio, SR, hop_s=5.0)
    assert n == int((~segs.silent).sum())
    for bad in ((), (0.0,), (1.0, 1.0), (float("nan"),), (-0.5,)):
        with pytest.raises(ValueError, match="window_scales must be distinct positive numbers"):
            add_recording(embedder, index, "w", audio, SR, window_scales=bad)


def test_the_cli_option(tmp_path: Path, rng: np.random.Generator) -> None:
    (tmp_path / "cat" / "w1").mkdir(parents=True)
    sf.write(tmp_path / "cat" / "w1" / "a.wav", chirps(rng, 30.0), SR)

    def build(*extra: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "csi_runtime", "index", "build", str(tmp_path / "cat"), "--force",
             "-o", str(tmp_path / "i.csi"), *extra],
            capture_output=True, timeout=300,
        )  # fmt: skip

    one = build("--window-scales", "1")
    assert one.returncode == 0, one.stderr.decode()
    n_one = len(ReferenceIndex.load(tmp_path / "i.csi"))
    two = build("--window-scales", "1,0.5")
    assert two.returncode == 0, two.stderr.decode()
    assert len(ReferenceIndex.load(tmp_path / "i.csi")) > n_one
    bad = build("--window-scales", "1,x")
    assert bad.returncode != 0 and b"--window-scales must be distinct positive numbers" in bad.stderr
    np.save(tmp_path / "v.npy", np.eye(2, 8, dtype=np.float32))
    (tmp_path / "w.txt").write_text("a\nb\n")
    vectors = subprocess.run(
        [sys.executable, "-m", "csi_runtime", "index", "build", "--vectors", str(tmp_path / "v.npy"),
         "--works", str(tmp_path / "w.txt"), "-o", str(tmp_path / "v.csi"), "--window-scales", "1,0.5"],
        capture_output=True, timeout=300,
    )  # fmt: skip
    assert vectors.returncode != 0 and b"--vectors are embedded already" in vectors.stderr


def test_embed_segments_multi_equals_one_length_at_a_time(
    embedder: Embedder, rng: np.random.Generator
) -> None:
    audio = chirps(rng, 33.0)
    windows = [None, 14.0, 28.0, 6.0]
    many = embedder.embed_segments_multi(audio, SR, windows, hop_s=4.0)
    assert len(many) == len(windows)
    for window_s, got in zip(windows, many, strict=True):
        one = embedder.embed_segments(audio, SR, window_s=window_s, hop_s=4.0)
        np.testing.assert_array_equal(got.starts, one.starts)
        np.testing.assert_array_equal(got.ends, one.ends)
        np.testing.assert_array_equal(got.silent, one.silent)
        np.testing.assert_allclose(got.vectors, one.vectors, atol=1e-6)

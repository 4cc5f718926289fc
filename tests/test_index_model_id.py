"""ReferenceIndex model identity: saved and loaded, old files without it, and check_model."""

from __future__ import annotations

import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import csi_runtime
from csi_runtime import IndexFileError, IndexModelMismatchError, ReferenceIndex
from csi_runtime import index_format as fmt


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def rewrite_footer(src: Path, dst: Path, mutate) -> Path:  # type: ignore[no-untyped-def]
    """A copy of an index file whose footer is edited (checksums kept valid)."""
    data = src.read_bytes()
    foff, flen, _, version, end = fmt.TRAILER.unpack(data[-fmt.TRAILER.size :])
    footer = json.loads(data[foff : foff + flen])
    mutate(footer)
    blob = json.dumps(footer, sort_keys=True).encode()
    dst.write_bytes(data[:foff] + blob + fmt.TRAILER.pack(foff, len(blob), zlib.crc32(blob), version, end))
    return dst


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
@pytest.mark.parametrize("mmap", [False, True])
def test_model_id_survives_save_and_load(
    rng: np.random.Generator, tmp_path: Path, dtype: str, mmap: bool
) -> None:
    d = int(rng.integers(4, 40))
    index = ReferenceIndex(d, dtype=dtype, model_id="cqtnet-small@3f2a")
    x = unit(rng, 12, d)
    index.add(x, [f"w{i % 5}" for i in range(12)])
    assert index.model_id == "cqtnet-small@3f2a"
    assert "cqtnet-small@3f2a" in repr(index)
    path = tmp_path / "a.csi"
    index.save(path)
    loaded = ReferenceIndex.load(path, mmap=mmap)
    assert loaded.model_id == "cqtnet-small@3f2a"
    assert loaded.dim == d and len(loaded) == 12
    header, _ = fmt.read_footer(path)
    assert header["model_id"] == "cqtnet-small@3f2a"
    assert ReferenceIndex.verify_file(path)["model_id"] == "cqtnet-small@3f2a"
    # Saving what was loaded keeps the identity.
    loaded.save(tmp_path / "b.csi")
    assert ReferenceIndex.load(tmp_path / "b.csi").model_id == "cqtnet-small@3f2a"


def test_format_version_is_unchanged_and_old_files_load_without_model(
    rng: np.random.Generator, tmp_path: Path
) -> None:
    """model_id is an optional footer key: same format version, and files that predate it load."""
    index = ReferenceIndex(8, model_id="m1")
    index.add(unit(rng, 3, 8), [1, 2, 3], [{"t": "a"}, {"t": "b"}, {"t": "c"}])
    path = tmp_path / "new.csi"
    index.save(path)
    data = path.read_bytes()
    assert struct.unpack_from("<I", data, len(fmt.MAGIC))[0] == 1 == fmt.FORMAT_VERSION
    old = rewrite_footer(path, tmp_path / "old.csi", lambda f: f.pop("model_id"))
    assert "model_id" not in fmt.read_footer(old)[0]
    loaded = ReferenceIndex.load(old)
    assert loaded.model_id is None
    q = unit(rng, 1, 8)
    assert [h.work_id for h in loaded.search(q, 3)[0]] == [h.work_id for h in index.search(q, 3)[0]]
    # An index made without a model saves null and loads None.
    ReferenceIndex(8).save(tmp_path / "none.csi")
    assert fmt.read_footer(tmp_path / "none.csi")[0]["model_id"] is None
    assert ReferenceIndex.load(tmp_path / "none.csi").model_id is None


@pytest.mark.parametrize("bad", [5, "", "   ", ["m"], True])
def test_bad_model_ids_are_refused(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ValueError, match="model_id"):
        ReferenceIndex(4, model_id=bad)  # type: ignore[arg-type]
    ReferenceIndex(4, model_id="ok").save(tmp_path / "ok.csi")
    edited = rewrite_footer(tmp_path / "ok.csi", tmp_path / "bad.csi", lambda f: f.update(model_id=bad))
    with pytest.raises(IndexFileError, match="model_id"):
        ReferenceIndex.load(edited)


def test_check_model_accepts_the_same_model_and_refuses_others() -> None:
    index = ReferenceIndex(256, model_id="X")
    index.check_model("X", 256)  # no error
    with pytest.raises(IndexModelMismatchError) as err:
        index.check_model("Y", 128)
    msg = str(err.value)
    assert msg == (
        "index built with model X (dim 256), this embedder is Y (dim 128): "
        "rebuild the index with csi index build"
    )
    with pytest.raises(IndexModelMismatchError, match=r"model X \(dim 256\), this embedder is Y \(dim 256\)"):
        index.check_model("Y", 256)  # same dim, other model
    with pytest.raises(IndexModelMismatchError, match=r"this embedder is X \(dim 128\)"):
        index.check_model("X", 128)  # same model name, other dim: still not comparable
    assert issubclass(IndexModelMismatchError, ValueError)
    assert "IndexModelMismatchError" in csi_runtime.__all__


def test_index_without_model_checks_dim_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    index = ReferenceIndex(16)
    with pytest.raises(IndexModelMismatchError, match=r"unrecorded model \(dim 16\).*Y \(dim 32\)"):
        index.check_model("Y", 32)
    with caplog.at_level(logging.WARNING, logger="csi_runtime"):
        index.check_model("Y", 16)
        index.check_model("Y", 16)
    warnings = [r for r in caplog.records if "does not record the model" in r.getMessage()]
    assert len(warnings) == 1
    assert "Y" in warnings[0].getMessage()


def test_iter_metadata_lists_live_vectors_in_order(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    index = ReferenceIndex(8, model_id="m")
    vecs = rng.standard_normal((5, 8)).astype(np.float32)
    index.add(vecs[:2], ["a", "b"], [{"path": "a.wav"}, {"path": "b.wav"}])
    index.add(vecs[2:], ["c", "a", "d"], [{"path": "c.wav"}, {"path": "a2.wav"}, None])
    index.remove("a")
    assert list(index.iter_metadata()) == [("b", {"path": "b.wav"}), ("c", {"path": "c.wav"}), ("d", {})]
    index.save(tmp_path / "x.csi")
    loaded = ReferenceIndex.load(tmp_path / "x.csi")
    assert list(loaded.iter_metadata()) == [("b", {"path": "b.wav"}), ("c", {"path": "c.wav"}), ("d", {})]

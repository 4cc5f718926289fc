"""The csi command line, run as a real subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np


def csi(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "csi_runtime", *args], capture_output=True, text=True, timeout=300
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"csi {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def test_entry_point_is_installed() -> None:
    exe = shutil.which("csi") or str(Path(sys.executable).parent / "csi")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    assert "selftest" in out.stdout and "index" in out.stdout


def test_info() -> None:
    info = json.loads(csi("info", "--json").stdout)
    assert info["cpu"]["kernels_selected"] in ("avx512", "avx2", "generic")
    assert "CPU kernels" in csi("info").stdout


def test_index_build_info_verify_search(rng: np.random.Generator, tmp_path: Path) -> None:
    vectors = rng.standard_normal((300, 24)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.save(tmp_path / "v.npy", vectors)
    (tmp_path / "works.txt").write_text("".join(f"work-{i // 3}\n" for i in range(300)))
    (tmp_path / "meta.jsonl").write_text(
        "".join(json.dumps({"title": f"Title {i}"}) + "\n" for i in range(300))
    )
    np.save(tmp_path / "q.npy", vectors[[4, 250]])
    out = tmp_path / "cat.csi"
    args = ["index", "build", "--vectors", str(tmp_path / "v.npy"), "--works", str(tmp_path / "works.txt")]
    args += ["--metadata", str(tmp_path / "meta.jsonl"), "--out", str(out)]
    assert "300 vectors, 100 works" in csi(*args).stdout
    refused = csi(*args, check=False)
    assert refused.returncode != 0 and "--force" in refused.stderr
    csi(*args, "--force", "--dtype", "int8")
    assert "100 works" in csi("index", "info", str(out)).stdout
    assert "all checksums match" in csi("index", "verify", str(out)).stdout
    hits = json.loads(
        csi("index", "search", str(out), "--queries", str(tmp_path / "q.npy"), "-k", "3", "--json").stdout
    )
    assert [h[0]["work_id"] for h in hits] == ["work-1", "work-83"]
    assert hits[0][0]["metadata"] == {"title": "Title 4"}
    text = csi("index", "search", str(out), "--queries", str(tmp_path / "q.npy"), "--mmap").stdout
    assert "work-83" in text


def test_errors_are_reported_not_raised(rng: np.random.Generator, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csi"
    bad.write_bytes(b"CSIINDEX" + b"\0" * 100)
    proc = csi("index", "verify", str(bad), check=False)
    assert proc.returncode == 2
    assert "csi: error:" in proc.stderr and "Traceback" not in proc.stderr
    np.save(tmp_path / "v.npy", np.ones((3, 4), np.float32))
    (tmp_path / "w.txt").write_text("a\nb\n")
    proc = csi(
        "index",
        "build",
        "--vectors",
        str(tmp_path / "v.npy"),
        "--works",
        str(tmp_path / "w.txt"),
        "--out",
        str(tmp_path / "x.csi"),
        check=False,
    )
    assert proc.returncode != 0 and "2 work ids for 3 vectors" in proc.stderr


def test_selftest_quick() -> None:
    out = csi("selftest", "--quick").stdout
    assert "selftest passed" in out

"""The Python-side GPU paths (device selection, index mirrors), run against a stand-in CUDA module.

The stand-in keeps "device" arrays in host memory and ranks with the CPU kernel, so these tests
check csi_runtime's own logic on any machine: which path a call takes, that an index uploads
each segment once, that results equal the CPU path. The real kernels are tested in
tests/test_cuda.py on a GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import csi_runtime
from csi_runtime import ReferenceIndex, _native, topk


class FakeDeviceArray:
    def __init__(self, host: np.ndarray, device: int) -> None:
        self.host = np.array(host, copy=True)
        self.device = device

    @property
    def nbytes(self) -> int:
        return int(self.host.nbytes)

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {
            "shape": self.host.shape,
            "typestr": self.host.dtype.str,
            "data": (id(self), False),
            "version": 3,
        }


class FakeCuda:
    MAX_K = 65536
    NonFiniteError = type("NonFiniteError", (ValueError,), {})

    def __init__(self, total_memory: int = 80 << 30) -> None:
        self.total_memory = total_memory
        self.uploads: list[tuple[int, ...]] = []
        self.calls: list[str] = []
        fake = self

        class DeviceArray(FakeDeviceArray):
            @staticmethod
            def from_host(array: np.ndarray, device: int = 0) -> FakeDeviceArray:
                fake.uploads.append(array.shape)
                return FakeDeviceArray(array, device)

        self.DeviceArray = DeviceArray

    def device_count(self) -> int:
        return 1

    def last_error(self) -> str:
        return ""

    def device_info(self, i: int) -> dict[str, Any]:
        return {"name": "Fake GPU", "compute_capability": "9.0", "total_memory": self.total_memory}

    def topk(self, q: Any, refs: Any, scales: Any, k: int, metric: str, device: int) -> Any:
        def host(a: Any) -> Any:
            return a.host if isinstance(a, FakeDeviceArray) else a

        self.calls.append("device-refs" if isinstance(refs, FakeDeviceArray) else "host-refs")
        return _native.cpu.topk(host(q), host(refs), host(scales), k, metric, 1, "")


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    fake = FakeCuda()
    monkeypatch.setattr(_native, "cuda", fake)
    return fake


def test_topk_auto_prefers_the_gpu_for_batches_and_resident_refs(
    fake_cuda: FakeCuda, rng: np.random.Generator
) -> None:
    refs = rng.standard_normal((500, 16)).astype(np.float32)
    q = rng.standard_normal((40, 16)).astype(np.float32)
    cpu = topk(q, refs, 5, device="cpu")
    assert fake_cuda.calls == []
    topk(q[:3], refs, 5)  # few queries, host refs: the CPU
    assert fake_cuda.calls == []
    _s, i = topk(q, refs, 5)  # a batch: the GPU
    assert fake_cuda.calls == ["host-refs"]
    np.testing.assert_array_equal(i, cpu[1])
    resident = fake_cuda.DeviceArray.from_host(refs)
    _s1, i1 = topk(q[:1], resident, 5)  # refs on the device: the GPU even for one query
    assert fake_cuda.calls[-1] == "device-refs"
    np.testing.assert_array_equal(i1, cpu[1][:1])
    with pytest.raises(ValueError, match="live on the GPU"):
        topk(q, resident, 5, device="cpu")
    with pytest.raises(ValueError, match="exceeds the CUDA limit"):
        topk(q, np.zeros((70_000, 16), np.float32), 66_000, device="cuda")


def test_index_mirrors_each_segment_once(fake_cuda: FakeCuda, rng: np.random.Generator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    index = ReferenceIndex(16, dtype="int8")
    x = rng.standard_normal((300, 16)).astype(np.float32)
    index.add(x, [i // 3 for i in range(300)])
    index.save(tmp_path / "c.csi")
    loaded = ReferenceIndex.load(tmp_path / "c.csi", mmap=True)
    q = x[:7]
    want = loaded.search(q, 5, device="cpu")
    assert fake_cuda.uploads == []
    got = loaded.search(q, 5, device="cuda")
    assert [[h.work_id for h in r] for r in got] == [[h.work_id for h in r] for r in want]
    assert fake_cuda.uploads == [(300, 16), (300,)]  # vectors and int8 scales, once
    loaded.search(q, 5, device="cuda")
    assert len(fake_cuda.uploads) == 2  # reused
    loaded.add(rng.standard_normal((4, 16)), "late")
    loaded.search(q, 5, device="cuda")
    assert fake_cuda.uploads[2:] == [(4, 16), (4,)]  # only the new in-memory tail
    loaded.search(q, 5)  # auto: fits in device memory, so the GPU and its mirrors
    assert len(fake_cuda.uploads) == 4
    assert all(c == "device-refs" for c in fake_cuda.calls)


def test_index_auto_stays_on_the_cpu_when_the_catalog_is_too_big(
    monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator
) -> None:
    small_gpu = FakeCuda(total_memory=10_000)
    monkeypatch.setattr(_native, "cuda", small_gpu)
    index = ReferenceIndex(64, dtype="float32")
    index.add(rng.standard_normal((200, 64)), "w")
    index.search(rng.standard_normal(64), 1)
    assert small_gpu.calls == [] and small_gpu.uploads == []


def test_build_info_lists_fake_devices(fake_cuda: FakeCuda, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fake_cuda, "build_info", lambda: {"archs": ["90"]}, raising=False)
    info = csi_runtime.build_info()
    assert info["cuda"]["available"] is True
    assert info["cuda"]["devices"][0]["name"] == "Fake GPU"

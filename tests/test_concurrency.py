"""The kernels are shared by many threads of a long-running service, and survive fork()."""

from __future__ import annotations

import multiprocessing as mp
import threading

import numpy as np
import pytest

from csi_runtime import topk


def _child_topk(q: np.ndarray, refs: np.ndarray, out: mp.Queue) -> None:  # type: ignore[type-arg]
    out.put(topk(q, refs, 10, threads=2))


def test_threads_get_identical_results(rng: np.random.Generator) -> None:
    refs = rng.standard_normal((30_000, 64)).astype(np.float16)
    queries = [rng.standard_normal((int(n), 64)).astype(np.float32) for n in rng.integers(1, 40, 16)]
    serial = [topk(q, refs, 50, threads=2) for q in queries]
    results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(queries)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                results[i] = topk(queries[i], refs, 50, threads=2)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for got, want in zip(results, serial):
        assert got is not None
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_fork_after_use(rng: np.random.Generator) -> None:
    refs = rng.standard_normal((20_000, 32)).astype(np.float32)
    q = rng.standard_normal((12, 32)).astype(np.float32)
    parent = topk(q, refs, 10, threads=2)  # starts the worker pool in the parent
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_child_topk, args=(q, refs, out))
    child.start()
    got = out.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    np.testing.assert_array_equal(got[1], parent[1])

"""Benchmark fixtures: this machine's ceilings, measured in the same run, and cached datasets.

`pytest benchmarks/ --benchmark-only` runs the full grid. `CSI_BENCH_SMOKE=1` shrinks every
grid to a few small cells (CI runs that with --benchmark-disable so the suite cannot rot).
At the end of a run the per-cell comparison tables are written to benchmarks/results/.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

SMOKE = os.environ.get("CSI_BENCH_SMOKE") == "1"
RESULTS_DIR = Path(__file__).parent / "results"
_cells: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = defaultdict(dict)
_machine: dict[str, Any] = {}


def record(table: str, key: dict[str, Any], values: dict[str, Any]) -> None:
    """Merges measured values into the row of a results table identified by `key`.

    Each benchmark (one library in one cell) adds its columns to the cell's row, so the
    table written at session end compares libraries side by side.
    """
    row = _cells[table].setdefault(tuple(key.values()), dict(key))
    row.update(values)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@pytest.fixture(scope="session")
def machine() -> dict[str, Any]:
    """Ceilings of this machine: memory read bandwidth (bytes/s) and numpy SGEMM rate (FLOP/s)."""
    if not _machine:
        from csi_runtime import _native, default_threads

        threads = default_threads()
        bw = _native.cpu.memory_read_bandwidth(1 << (26 if SMOKE else 30), threads, 3 if SMOKE else 7)
        n = 512 if SMOKE else 2048
        rng = np.random.default_rng(0)
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        a @ b
        best = float("inf")
        for _ in range(3 if SMOKE else 7):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        _machine.update(
            cpu=_cpu_model(),
            threads=threads,
            read_bandwidth=bw,
            sgemm_flops=2 * n**3 / best,
            numpy=np.__version__,
        )
    return _machine


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _cells or SMOKE:
        return
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    for table, cells in _cells.items():
        rows = list(cells.values())
        (RESULTS_DIR / f"{table}.json").write_text(json.dumps({"machine": _machine, "rows": rows}, indent=1))
        header: list[str] = []
        for r in rows:
            header += [h for h in r if h not in header]
        lines = [
            f"<!-- written by benchmarks/conftest.py on {stamp} -->",
            f"Machine: {_machine.get('cpu')}, {_machine.get('threads')} threads; "
            f"measured read bandwidth {_machine.get('read_bandwidth', 0) / 1e9:.1f} GB/s, "
            f"numpy SGEMM {_machine.get('sgemm_flops', 0) / 1e9:.0f} GFLOP/s.",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        lines += ["| " + " | ".join(str(r.get(h, "")) for h in header) + " |" for r in rows]
        (RESULTS_DIR / f"{table}.md").write_text("\n".join(lines) + "\n")

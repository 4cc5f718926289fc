#!/usr/bin/env bash
# First run of the CUDA top-k on a GPU machine (e.g. the lent H200): build for the local GPU,
# then check, test and benchmark, cheapest and most informative first. Writes logs to $OUT
# (default /tmp/csi_cuda_run) and prints a short summary last.
#
#   bash scripts/cuda_first_run.sh            # build + build checks + fast GPU tests
#   STAGE=all bash scripts/cuda_first_run.sh  # ... + slow GPU tests + benchmark
#
# Works offline: uses the machine's python3 (numpy, pybind11, pytest and torch are expected
# there) and installs nothing from a registry. pytest-timeout and pytest-benchmark are used when
# importable; where they are missing, carry their wheels (see the device tool's README).
set -uo pipefail

OUT=${OUT:-/tmp/csi_cuda_run}
STAGE=${STAGE:-fast}
PY=${PYTHON:-python3}
ARCH=${CSI_CUDA_ARCHS:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '.')}
mkdir -p "$OUT"
timeout_args() { $PY -c "import pytest_timeout" 2>/dev/null && echo "--timeout $1"; }
summary() { echo "$*" | tee -a "$OUT/summary.txt"; }
: >"$OUT/summary.txt"

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
summary "gpu: $(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader 2>&1 | head -1)"

# 1. Build (only the local architecture: minutes matter on a lent machine).
export CSI_RUNTIME_CUDA=on CSI_CUDA_ARCHS="${ARCH:-90}"
if ! $PY -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.txt" 2>&1; then
  summary "pip install failed (see build.txt); trying setup.py build_ext --inplace"
  $PY setup.py build_ext --inplace >>"$OUT/build.txt" 2>&1 || { summary "BUILD FAILED"; tail -30 "$OUT/build.txt"; exit 1; }
  export PYTHONPATH="$PWD/runtime${PYTHONPATH:+:$PYTHONPATH}"
fi
summary "build: ok for sm_$CSI_CUDA_ARCHS; warnings: $(grep -ci 'warning' "$OUT/build.txt")"
$PY -c "import json, csi_runtime; print(json.dumps(csi_runtime.build_info(), indent=1))" >"$OUT/build_info.json" 2>&1
summary "cuda available: $($PY -c 'from csi_runtime import _native; print(_native.cuda_available())' 2>&1)"

# 2. Ceiling and a smoke test that prints instead of asserting.
$PY - >"$OUT/smoke.txt" 2>&1 <<'EOF'
import time
import numpy as np
import csi_runtime
from csi_runtime import _cuda
print("copy bandwidth (read+write) GB/s:", _cuda.copy_bandwidth(1 << 30, 20, 0) / 1e9)
rng = np.random.default_rng(0)
q = rng.standard_normal((16, 256), dtype=np.float32)
r = rng.standard_normal((1_000_000, 256), dtype=np.float32).astype(np.float16)
dr = _cuda.DeviceArray.from_host(r)
s, i, st = _cuda._topk_with_stats(q, dr, None, 10, "ip", 0)
ref = (q.astype(np.float64) @ r.astype(np.float64).T)
top = np.argsort(-ref, axis=1, kind="stable")[:, :10]
print("stats:", st)
print("index agreement with float64:", (top == i).mean())
print("max score error:", np.abs(np.take_along_axis(ref, i, 1) - s).max())
for nq in (1, 16, 256):
    qq = rng.standard_normal((nq, 256), dtype=np.float32)
    _cuda.topk(qq, dr, None, 10, "ip", 0)
    t = time.perf_counter()
    for _ in range(10):
        _cuda.topk(qq, dr, None, 10, "ip", 0)
    dt = (time.perf_counter() - t) / 10
    print(f"Q={nq}: {dt * 1e3:.3f} ms, refs read at {r.nbytes / dt / 1e9:.0f} GB/s")
EOF
summary "smoke: $(grep -E 'agreement|error:' "$OUT/smoke.txt" | tr '\n' ' ')"

# 3. Tests: build checks and CPU logic, then the fast GPU tests.
$PY -m pytest tests/test_cuda_build.py tests/test_cuda_logic.py -q -p no:cacheprovider >"$OUT/tests_cpu.txt" 2>&1
summary "cpu-side tests: $(tail -1 "$OUT/tests_cpu.txt")"
$PY -m pytest tests/test_cuda.py -m "not slow" -q -p no:cacheprovider $(timeout_args 900) >"$OUT/tests_gpu.txt" 2>&1
summary "gpu tests (not slow): $(tail -1 "$OUT/tests_gpu.txt")"

if [ "$STAGE" = all ]; then
  $PY -m pytest tests/test_cuda.py -m slow -q -p no:cacheprovider $(timeout_args 1800) >"$OUT/tests_gpu_slow.txt" 2>&1
  summary "gpu tests (slow): $(tail -1 "$OUT/tests_gpu_slow.txt")"
  $PY -m pytest benchmarks/bench_topk_cuda.py --benchmark-only -q -p no:cacheprovider \
    --benchmark-json "$OUT/bench.json" --benchmark-columns=median,rounds >"$OUT/bench.txt" 2>&1
  summary "benchmark: $(tail -1 "$OUT/bench.txt")"
  $PY - >>"$OUT/summary.txt" 2>&1 <<EOF
import json
for b in json.load(open("$OUT/bench.json"))["benchmarks"]:
    e = b["extra_info"]
    print(f"{b['name']:<32} {b['stats']['median'] * 1e3:9.2f} ms  {e['fraction_of_copy']:6.2%} of copy BW"
          + (f"  x{e['speedup_vs_torch']:.2f} vs torch" if "speedup_vs_torch" in e else ""))
EOF
fi
cat "$OUT/summary.txt"

"""Build script for the csi native extensions.

Two pybind11 modules are built from ``csrc/``:

* ``csi_runtime._C`` (always): the C++ CPU ranking kernels. The hot kernels are compiled
  three times (generic, AVX2+FMA+F16C, AVX-512) and chosen at run time from the CPU's
  features, so one build runs on any x86-64 machine.
* ``csi_runtime._cuda`` (when nvcc is found, or forced): the CUDA ranking kernels, built
  for an explicit architecture list plus PTX, linked against the *static* CUDA runtime so
  the package still imports on machines without CUDA.

Environment switches:

``CSI_RUNTIME_CUDA``  ``auto`` (default: build if nvcc is found), ``1``/``on`` (require it,
                      fail if nvcc is missing), ``0``/``off`` (never build it).
``CSI_CUDA_ARCHS``    semicolon list of SM versions, default ``80;86;89;90``; PTX for the
                      highest one is embedded too, so newer GPUs JIT-compile it.
``CUDA_HOME``         toolkit location (else the directory of ``nvcc`` on PATH, else
                      ``/usr/local/cuda``).
``CSI_BUILD_JOBS``    parallel compile jobs (default: number of CPUs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pybind11 import get_include as pybind11_include
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"

DEFAULT_CUDA_ARCHS = "80;86;89;90"

# Per-file ISA flags: a source whose stem ends with one of these suffixes is compiled with
# the matching flags; everything else gets the x86-64 baseline so the module loads anywhere.
ISA_FLAGS = {
    "_avx2": ["-mavx2", "-mfma", "-mf16c"],
    # GCC 12 warns about its own _mm512_undefined_* helpers; the warning is a false positive.
    "_avx512": [
        "-mavx512f",
        "-mavx512bw",
        "-mavx512dq",
        "-mavx512vl",
        "-mfma",
        "-mf16c",
        "-Wno-uninitialized",
        "-Wno-maybe-uninitialized",
    ],
}

# CUDA sources compiled without ptxas spill warnings: segmented_sort.cu only instantiates CUB.
CUDA_NO_SPILL_WARNINGS = {"segmented_sort"}

# -ffast-math is deliberately absent: the kernels rely on IEEE NaN/Inf semantics to detect
# bad input, and on a fixed operation order for reproducible tie-breaking.
CXX_FLAGS = ["-std=c++17", "-O3", "-fvisibility=hidden", "-pthread", "-Wall", "-Wextra"]


def _cuda_mode() -> str:
    value = os.environ.get("CSI_RUNTIME_CUDA", "auto").strip().lower()
    if value in ("", "auto"):
        return "auto"
    if value in ("1", "on", "yes", "true", "force"):
        return "on"
    if value in ("0", "off", "no", "false"):
        return "off"
    raise SystemExit(f"CSI_RUNTIME_CUDA must be auto, on or off (got {value!r})")


def _find_cuda_home() -> Path | None:
    """The CUDA toolkit root: the first candidate with both bin/nvcc and include/cuda_runtime.h.

    An nvcc on PATH may be a wrapper script outside the toolkit (e.g. /usr/local/bin/nvcc
    exec'ing the real one), so its directory is only accepted when the headers sit beside it.
    """
    candidates: list[Path] = []
    env = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if env:
        candidates.append(Path(env))
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent)
    candidates.append(Path("/usr/local/cuda"))
    for home in candidates:
        if (home / "bin" / "nvcc").exists() and (home / "include" / "cuda_runtime.h").exists():
            return home
    return None


def _cuda_archs() -> list[str]:
    raw = os.environ.get("CSI_CUDA_ARCHS", DEFAULT_CUDA_ARCHS)
    archs = [a.strip().replace(".", "") for a in raw.replace(",", ";").split(";") if a.strip()]
    if not archs or not all(a.isdigit() for a in archs):
        raise SystemExit(f"CSI_CUDA_ARCHS must be a list like '80;90' (got {raw!r})")
    return sorted(set(archs), key=int)


def _nvcc_version(nvcc: Path) -> str:
    out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        if "release" in line:
            return line.split("release", 1)[1].split(",")[0].strip()
    return "unknown"


def _compiler_version(cmd: str) -> str:
    try:
        out = subprocess.run([cmd, "--version"], capture_output=True, text=True, check=True)
        return out.stdout.splitlines()[0].strip()
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


def _sources(folder: str, suffix: str) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (CSRC / folder).glob(f"*{suffix}"))


class BuildExt(build_ext):
    """Compiles each source with its own flags (ISA variants, nvcc for .cu) in parallel."""

    def build_extension(self, ext: Extension) -> None:
        cc = self.compiler
        # setuptools' unixccompiler compiles C++ with the C driver; make sure it is the C++ one.
        cxx = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++"
        cc.set_executable("compiler_so", [*cxx.split(), *cc.compiler_so[1:]])
        cc.set_executable("linker_so", [*cxx.split(), *cc.linker_so[1:]])

        build_temp = Path(self.build_temp) / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        include_dirs = [pybind11_include(), str(CSRC), *ext.include_dirs, *cc.include_dirs]
        macros = list(ext.define_macros)
        cuda = getattr(ext, "cuda", None)

        def compile_one(src: str) -> str:
            stem = Path(src).stem
            obj = str(build_temp / (src.replace("/", "_") + ".o"))
            if src.endswith(".cu"):
                assert cuda is not None
                cmd = [
                    str(cuda["nvcc"]),
                    "-c",
                    src,
                    "-o",
                    obj,
                    "-std=c++17",
                    "-O3",
                    "--expt-relaxed-constexpr",
                    "-Xcompiler",
                    "-fPIC,-fvisibility=hidden,-Wall,-Wextra",
                    # Register spills / local memory in our kernels show up as build warnings
                    # (not for CUB's, which spill a few bytes by NVIDIA's own tuning).
                    *([] if stem in CUDA_NO_SPILL_WARNINGS else ["-Xptxas", "-warn-spills,-warn-lmem-usage"]),
                    f"-I{CSRC}",
                    *cuda["gencode"],
                    *[f"-D{k}={v}" if v is not None else f"-D{k}" for k, v in macros],
                ]
                self.announce(" ".join(cmd), level=2)
                subprocess.run(cmd, check=True, cwd=ROOT)
                return obj
            extra = list(CXX_FLAGS)
            for suffix, flags in ISA_FLAGS.items():
                if stem.endswith(suffix):
                    extra += flags
            cmd = [
                *cc.compiler_so,
                "-c",
                src,
                "-o",
                obj,
                *[f"-I{d}" for d in include_dirs],
                *[f"-D{k}={v}" if v is not None else f"-D{k}" for k, v in macros],
                *extra,
            ]
            self.announce(" ".join(cmd), level=2)
            subprocess.run(cmd, check=True, cwd=ROOT)
            return obj

        jobs = int(os.environ.get("CSI_BUILD_JOBS", os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            objects = list(pool.map(compile_one, ext.sources))

        out = self.get_ext_fullpath(ext.name)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        cc.link_shared_object(
            objects,
            out,
            libraries=ext.libraries,
            library_dirs=ext.library_dirs,
            extra_postargs=["-pthread", *ext.extra_link_args],
            target_lang="c++",
        )


def _extensions() -> list[Extension]:
    cxx = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++"
    cpu = Extension(
        "csi_runtime._C",
        sources=[*_sources("cpu", ".cpp"), "csrc/bindings_cpu.cpp"],
        define_macros=[("CSI_COMPILER", f'"{_compiler_version(cxx.split()[0])}"')],
        depends=[str(p) for p in (CSRC / "cpu").glob("*.h")]
        + [str(p) for p in (CSRC / "common").glob("*.h")],
        language="c++",
    )
    extensions = [cpu]

    mode = _cuda_mode()
    cuda_home = _find_cuda_home() if mode != "off" else None
    if mode == "on" and cuda_home is None:
        raise SystemExit("CSI_RUNTIME_CUDA=on but nvcc was not found (set CUDA_HOME or PATH)")
    if cuda_home is not None:
        nvcc = cuda_home / "bin" / "nvcc"
        archs = _cuda_archs()
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
        gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
        lib_dir = next(
            (d for d in (cuda_home / "lib64", cuda_home / "lib") if d.exists()), cuda_home / "lib64"
        )
        ext = Extension(
            "csi_runtime._cuda",
            sources=[*_sources("cuda", ".cu"), "csrc/bindings_cuda.cpp"],
            include_dirs=[str(cuda_home / "include")],
            define_macros=[
                ("CSI_CUDA_ARCHS", '"' + ";".join(archs) + '"'),
                ("CSI_NVCC_VERSION", f'"{_nvcc_version(nvcc)}"'),
                ("CSI_COMPILER", f'"{_compiler_version(cxx.split()[0])}"'),
            ],
            library_dirs=[str(lib_dir)],
            libraries=["cudart_static", "dl", "rt"],
            depends=[str(p) for p in (CSRC / "cuda").glob("*.cuh")]
            + [str(p) for p in (CSRC / "cuda").glob("*.h")]
            + [str(p) for p in (CSRC / "common").glob("*.h")],
            language="c++",
        )
        ext.cuda = {"nvcc": nvcc, "gencode": gencode}  # type: ignore[attr-defined]
        extensions.append(ext)
        print(
            f"csi: building the CUDA module with {nvcc} for sm_{', sm_'.join(archs)} + PTX", file=sys.stderr
        )
    else:
        print("csi: nvcc not found or CSI_RUNTIME_CUDA=off; building the CPU module only", file=sys.stderr)
    return extensions


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})

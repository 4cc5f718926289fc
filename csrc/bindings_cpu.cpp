// pybind11 module csi_runtime._C: the CPU ranking kernels.
//
// Argument contracts are strict (like FAISS's Python layer): the Python wrapper in
// csi_runtime/ranking.py converts and validates user input; this layer re-checks dtype,
// shape and contiguity so a direct call can never read out of bounds.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <thread>

#include "cpu/bandwidth.h"
#include "cpu/kernels.h"
#include "cpu/topk_cpu.h"

namespace py = pybind11;

namespace {

#ifndef CSI_COMPILER
#define CSI_COMPILER "unknown"
#endif

bool is_c_contiguous(const py::array& a) { return (a.flags() & py::array::c_style) != 0; }

csi::Storage storage_of(const py::array& refs) {
  if (py::dtype::of<float>().is(refs.dtype())) return csi::Storage::kF32;
  if (py::dtype("float16").is(refs.dtype())) return csi::Storage::kF16;
  if (py::dtype::of<int8_t>().is(refs.dtype())) return csi::Storage::kI8;
  throw py::type_error("refs must be float32, float16 or int8 (got " + std::string(py::str(refs.dtype())) + ")");
}

py::tuple topk(const py::array& queries, const py::array& refs, const py::object& scales, int64_t k,
               const std::string& metric, int threads, const std::string& isa, int64_t scratch_bytes) {
  if (!py::dtype::of<float>().is(queries.dtype()))
    throw py::type_error("queries must be float32 (got " + std::string(py::str(queries.dtype())) + ")");
  if (queries.ndim() != 2) throw py::value_error("queries must be 2-D [Q, D]");
  if (refs.ndim() != 2) throw py::value_error("refs must be 2-D [N, D]");
  if (!is_c_contiguous(queries) || !is_c_contiguous(refs))
    throw py::value_error("queries and refs must be C-contiguous");
  if (metric != "ip" && metric != "l2") throw py::value_error("metric must be 'ip' or 'l2' (got '" + metric + "')");

  csi::TopkProblem p;
  p.storage = storage_of(refs);
  p.nq = queries.shape(0);
  p.d = queries.shape(1);
  p.n = refs.shape(0);
  if (refs.shape(1) != p.d)
    throw py::value_error("dimension mismatch: queries have D=" + std::to_string(p.d) + ", refs have D=" +
                          std::to_string(refs.shape(1)));
  p.queries = static_cast<const float*>(queries.data());
  p.refs = refs.data();
  p.k = k;
  p.l2 = metric == "l2";

  py::array_t<float> scale_arr;
  if (!scales.is_none()) {
    py::array s = py::reinterpret_borrow<py::array>(scales);
    if (!py::dtype::of<float>().is(s.dtype()) || s.ndim() != 1 || s.shape(0) != p.n || !is_c_contiguous(s))
      throw py::value_error("scales must be a C-contiguous float32 array of shape [N]");
    scale_arr = py::reinterpret_borrow<py::array_t<float>>(s);
    p.scales = scale_arr.data();
  }

  csi::TopkOptions o;
  o.threads = threads > 0 ? threads : int(std::thread::hardware_concurrency());
  o.kernels = csi::cpu::select_kernels(isa.c_str());
  if (scratch_bytes > 0) o.scratch_bytes = scratch_bytes;

  py::array_t<float> out_scores({p.nq, p.k});
  py::array_t<int64_t> out_index({p.nq, p.k});
  float* s_ptr = out_scores.mutable_data();
  int64_t* i_ptr = out_index.mutable_data();
  {
    py::gil_scoped_release release;
    csi::topk_cpu(p, o, s_ptr, i_ptr);
  }
  return py::make_tuple(out_scores, out_index);
}

py::list supported_isas() {
  int count = 0;
  const char* const* names = csi::cpu::supported_isas(&count);
  py::list out;
  for (int i = 0; i < count; ++i) out.append(names[i]);
  return out;
}

py::dict build_info() {
  py::dict d;
  d["compiler"] = CSI_COMPILER;
  d["cxx_standard"] = __cplusplus;
  d["kernels_compiled"] = py::make_tuple("avx512", "avx2", "generic");
  d["kernels_supported"] = supported_isas();
  d["kernels_selected"] = csi::cpu::select_kernels("")->name;
  d["cpu_max_k"] = csi::kCpuMaxK;
  d["hardware_threads"] = std::thread::hardware_concurrency();
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "csi CPU ranking kernels (fused distance + exact top-k)";
  py::register_exception<csi::NonFiniteError>(m, "NonFiniteError", PyExc_ValueError);

  m.def("topk", &topk, py::arg("queries"), py::arg("refs"), py::arg("scales"), py::arg("k"), py::arg("metric"),
        py::arg("threads") = 0, py::arg("isa") = "", py::arg("scratch_bytes") = 0,
        "Exact top-k: queries float32 [Q, D]; refs float32/float16/int8 [N, D] (C order); scales float32 [N] "
        "for int8 else None. isa: '' (best), 'avx512', 'avx2' or 'generic'. scratch_bytes: candidate-buffer budget (0: "
        "default 256 MiB; smaller values force query chunking). Returns (scores float32 [Q, k], indices int64 [Q, k]), best first, ties to the "
        "lower index. metric 'ip' returns inner products (largest first), 'l2' squared distances (smallest "
        "first).");
  m.def("supported_isas", &supported_isas, "Kernel variants this CPU can run, best first.");
  m.def("build_info", &build_info);
  m.def(
      "memory_read_bandwidth",
      [](int64_t nbytes, int threads, int repeats) {
        py::gil_scoped_release release;
        return csi::memory_read_bandwidth(nbytes, threads > 0 ? threads : int(std::thread::hardware_concurrency()), repeats);
      },
      py::arg("nbytes") = int64_t(1) << 30, py::arg("threads") = 0, py::arg("repeats") = 5,
      "Best-of-repeats memory read rate in bytes/s over a fresh buffer of nbytes.");
  m.def(
      "read_rate",
      [](const py::array& a, int threads, int repeats) {
        if (!is_c_contiguous(a)) throw py::value_error("read_rate needs a C-contiguous array");
        const void* data = a.data();
        const int64_t nbytes = int64_t(a.nbytes());
        py::gil_scoped_release release;
        return csi::read_rate(data, nbytes, threads > 0 ? threads : int(std::thread::hardware_concurrency()),
                              repeats);
      },
      py::arg("array"), py::arg("threads") = 0, py::arg("repeats") = 3,
      "Best-of-repeats rate in bytes/s at which the threads read this array: the ceiling for a "
      "bandwidth-bound scan of it, measured on the same pages.");
  m.attr("CPU_MAX_K") = csi::kCpuMaxK;
}

// pybind11 module csi_runtime._cuda: the CUDA ranking kernels, device queries and
// DeviceArray (GPU-resident reference storage). Host code only: the CUDA work is behind the
// plain C++ interface of cuda/topk_cuda.h, and the module links the CUDA runtime statically,
// so it imports (and reports zero devices) on machines without a driver or GPU.
//
// Argument contracts are strict, as in bindings_cpu.cpp: the Python wrapper (ranking.py)
// converts and validates user input; this layer re-checks dtype, shape, contiguity and
// device placement so a direct call can never read out of bounds.
//
// Thread safety: topk() releases the GIL and owns all of its CUDA resources (streams,
// events, buffers), so calls from several Python threads run concurrently and independently.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cuda/topk_common.h"
#include "cuda/topk_cuda.h"
#include "cuda/topk_emulate.h"
#include "cuda/topk_plan.h"

namespace py = pybind11;

namespace {

#ifndef CSI_COMPILER
#define CSI_COMPILER "unknown"
#endif
#ifndef CSI_CUDA_ARCHS
#define CSI_CUDA_ARCHS ""
#endif
#ifndef CSI_NVCC_VERSION
#define CSI_NVCC_VERSION "unknown"
#endif

using csi::Storage;

// ---- array arguments ---------------------------------------------------------------------

enum class DType { kF32, kF16, kI8, kOther };

DType dtype_of(const py::dtype& dt) {
  if (dt.is(py::dtype::of<float>())) return DType::kF32;
  if (dt.is(py::dtype("float16"))) return DType::kF16;
  if (dt.is(py::dtype::of<int8_t>())) return DType::kI8;
  return DType::kOther;
}

const char* typestr_of(DType t) { return t == DType::kF32 ? "<f4" : (t == DType::kF16 ? "<f2" : "|i1"); }
const char* dtype_name(DType t) { return t == DType::kF32 ? "float32" : (t == DType::kF16 ? "float16" : "int8"); }
int64_t dtype_size(DType t) { return t == DType::kF32 ? 4 : (t == DType::kF16 ? 2 : 1); }

// A host numpy array or a device array seen through __cuda_array_interface__ (v2/v3).
struct ArrayArg {
  const void* ptr = nullptr;
  bool on_device = false;
  std::vector<int64_t> shape;
  DType dtype = DType::kOther;
  std::string dtype_str;
  uintptr_t stream = 0;  // producer stream to synchronise with (1: legacy default stream), 0 = none
  py::object keepalive;  // holds a host array while the GIL is released
};

bool is_c_contiguous(const py::array& a) { return (a.flags() & py::array::c_style) != 0; }

ArrayArg parse_array(const py::object& obj, const char* name) {
  ArrayArg out;
  if (py::isinstance<py::array>(obj)) {
    py::array arr = py::reinterpret_borrow<py::array>(obj);
    if (!is_c_contiguous(arr)) throw py::value_error(std::string(name) + " must be C-contiguous");
    for (py::ssize_t i = 0; i < arr.ndim(); ++i) out.shape.push_back(int64_t(arr.shape(i)));
    out.dtype = dtype_of(arr.dtype());
    out.dtype_str = py::str(arr.dtype());
    out.ptr = arr.data();
    out.keepalive = arr;
    return out;
  }
  if (!py::hasattr(obj, "__cuda_array_interface__"))
    throw py::type_error(std::string(name) + " must be a numpy array or a CUDA array (__cuda_array_interface__)");
  py::dict iface = obj.attr("__cuda_array_interface__");
  py::tuple shape = iface["shape"];
  for (auto s : shape) out.shape.push_back(s.cast<int64_t>());
  py::dtype dt(iface["typestr"].cast<std::string>());
  out.dtype = dtype_of(dt);
  out.dtype_str = py::str(dt);
  py::tuple data = iface["data"];
  out.ptr = reinterpret_cast<const void*>(data[0].cast<uintptr_t>());
  out.on_device = true;
  if (iface.contains("mask") && !iface["mask"].is_none())
    throw py::value_error(std::string(name) + ": masked CUDA arrays are not supported");
  if (iface.contains("strides") && !iface["strides"].is_none()) {
    py::tuple strides = iface["strides"];
    int64_t expect = dt.itemsize();
    for (py::ssize_t i = py::ssize_t(out.shape.size()) - 1; i >= 0; --i) {
      if (out.shape[size_t(i)] > 1 && strides[size_t(i)].cast<int64_t>() != expect)
        throw py::value_error(std::string(name) + " on the GPU must be C-contiguous");
      expect *= out.shape[size_t(i)];
    }
  }
  if (iface.contains("stream")) {
    if (!iface["stream"].is_none()) {
      const auto s = iface["stream"].cast<uintptr_t>();
      if (s == 0) throw py::value_error(std::string(name) + ": __cuda_array_interface__ stream 0 is not allowed");
      out.stream = s;
    }
  } else {
    // No stream key (v2 producers such as torch): the data may still be being written on the
    // legacy default stream, with which our non-blocking streams do not synchronise implicitly.
    out.stream = 1;
  }
  out.keepalive = obj;
  return out;
}

Storage ref_type(const ArrayArg& r) {
  switch (r.dtype) {
    case DType::kF32:
      return Storage::kF32;
    case DType::kF16:
      return Storage::kF16;
    case DType::kI8:
      return Storage::kI8;
    default:
      throw py::type_error("refs must be float32, float16 or int8 (got " + r.dtype_str + ")");
  }
}

struct Problem {
  ArrayArg q, r, s;
  bool has_scales = false;
  int64_t nq = 0, d = 0, n = 0;
  Storage type = Storage::kF32;
  bool l2 = false;
};

Problem parse_problem(const py::object& queries, const py::object& refs, const py::object& scales, int64_t k,
                      const std::string& metric, int64_t max_k) {
  Problem p;
  if (metric != "ip" && metric != "l2") throw py::value_error("metric must be 'ip' or 'l2' (got '" + metric + "')");
  p.l2 = metric == "l2";
  p.q = parse_array(queries, "queries");
  p.r = parse_array(refs, "refs");
  if (p.q.dtype != DType::kF32) throw py::type_error("queries must be float32 (got " + p.q.dtype_str + ")");
  if (p.q.shape.size() != 2) throw py::value_error("queries must be 2-D [Q, D]");
  if (p.r.shape.size() != 2) throw py::value_error("refs must be 2-D [N, D]");
  p.type = ref_type(p.r);
  p.nq = p.q.shape[0];
  p.d = p.q.shape[1];
  p.n = p.r.shape[0];
  if (p.d < 1) throw py::value_error("queries have dimension 0");
  if (p.r.shape[1] != p.d)
    throw py::value_error("dimension mismatch: queries have D=" + std::to_string(p.d) + ", refs have D=" +
                          std::to_string(p.r.shape[1]));
  if (p.n < 1) throw py::value_error("refs is empty: nothing to rank against");
  if (k < 1) throw py::value_error("k must be >= 1 (got " + std::to_string(k) + ")");
  if (k > p.n)
    throw py::value_error("k = " + std::to_string(k) + " exceeds the number of references (" + std::to_string(p.n) +
                          ")");
  if (k > max_k)
    throw py::value_error("k = " + std::to_string(k) + " exceeds the CUDA limit of " + std::to_string(max_k));
  if (!scales.is_none()) {
    p.s = parse_array(scales, "scales");
    if (p.s.dtype != DType::kF32 || p.s.shape.size() != 1 || p.s.shape[0] != p.n)
      throw py::value_error("scales must be a C-contiguous float32 array of shape [N]");
    p.has_scales = true;
  }
  if ((p.type == Storage::kI8) != p.has_scales)
    throw py::value_error("scales are required for int8 refs and only for them");
  return p;
}

py::dict plan_dict(const csi::topk::Plan& plan) {
  py::dict d;
  d["q_block"] = plan.q_block;
  d["cap"] = plan.cap;
  d["stride"] = plan.stride;
  d["slab_rows"] = plan.slab_rows;
  d["max_chunk"] = plan.max_chunk;
  return d;
}

py::dict stats_dict(const csi::topk::RunStats& st) {
  py::dict d = plan_dict(st.plan);
  d["blocks"] = st.blocks;
  d["slabs"] = st.slabs;
  d["chunks"] = st.chunks;
  d["launches"] = st.launches;
  d["merges"] = st.merges;
  d["overflows"] = st.overflows;
  d["rows_scored"] = st.rows_scored;
  d["max_depth"] = st.max_depth;
  return d;
}

// ---- top-k -------------------------------------------------------------------------------

py::tuple topk_impl(const py::object& queries, const py::object& refs, const py::object& scales, int64_t k,
                    const std::string& metric, int device, int64_t cap, int64_t slab_rows, int64_t max_chunk,
                    int64_t budget_bytes, bool with_stats) {
  Problem p = parse_problem(queries, refs, scales, k, metric, csi::topk::kMaxK);
  const int count = csi::cuda::device_count();
  if (device < 0 || device >= count)
    throw py::value_error("cuda:" + std::to_string(device) + " requested but " + std::to_string(count) +
                          " CUDA device(s) are usable" +
                          (count == 0 ? " (" + csi::cuda::last_error() + ")" : std::string()));
  csi::cuda::TopkArgs a;
  a.device = device;
  a.queries = static_cast<const float*>(p.q.ptr);
  a.queries_on_device = p.q.on_device;
  a.nq = p.nq;
  a.d = p.d;
  a.refs = p.r.ptr;
  a.refs_on_device = p.r.on_device;
  a.type = p.type;
  a.scales = p.has_scales ? static_cast<const float*>(p.s.ptr) : nullptr;
  a.scales_on_device = p.has_scales && p.s.on_device;
  a.n = p.n;
  a.k = k;
  a.l2 = p.l2;
  a.sync_streams[0] = p.q.stream;
  a.sync_streams[1] = p.r.stream;
  a.sync_streams[2] = p.has_scales ? p.s.stream : 0;
  a.cap = cap;
  a.slab_rows = slab_rows;
  a.max_chunk = max_chunk;
  a.budget_bytes = budget_bytes;

  py::array_t<float> out_scores({p.nq, k});
  py::array_t<int64_t> out_index({p.nq, k});
  float* s_ptr = out_scores.mutable_data();
  int64_t* i_ptr = out_index.mutable_data();
  csi::topk::RunStats st;
  {
    py::gil_scoped_release release;
    st = csi::cuda::topk(a, s_ptr, i_ptr);
  }
  if (with_stats) return py::make_tuple(out_scores, out_index, stats_dict(st));
  return py::make_tuple(out_scores, out_index);
}

// CPU emulation of the CUDA path (tests on machines without a GPU).
py::tuple emulate_topk(const py::object& queries, const py::object& refs, const py::object& scales, int64_t k,
                       const std::string& metric, int64_t cap, int64_t slab_rows, int64_t max_chunk,
                       int64_t budget_bytes) {
  Problem p = parse_problem(queries, refs, scales, k, metric, csi::topk::kMaxK);
  if (p.q.on_device || p.r.on_device || (p.has_scales && p.s.on_device))
    throw py::type_error("the emulation takes host (numpy) arrays only");
  csi::topk::HostProblem hp;
  hp.queries = static_cast<const float*>(p.q.ptr);
  hp.nq = p.nq;
  hp.d = p.d;
  hp.refs = p.r.ptr;
  hp.type = p.type;
  hp.scales = p.has_scales ? static_cast<const float*>(p.s.ptr) : nullptr;
  hp.n = p.n;
  hp.k = k;
  hp.l2 = p.l2;
  py::array_t<float> out_scores({p.nq, k});
  py::array_t<int64_t> out_index({p.nq, k});
  float* s_ptr = out_scores.mutable_data();
  int64_t* i_ptr = out_index.mutable_data();
  csi::topk::RunStats st;
  if (p.nq > 0) {
    const csi::topk::Plan plan = csi::topk::make_plan(p.nq, p.n, p.d, k, budget_bytes, slab_rows, cap, max_chunk);
    py::gil_scoped_release release;
    st = csi::topk::emulate_topk(hp, plan, s_ptr, i_ptr);
  }
  return py::make_tuple(out_scores, out_index, stats_dict(st));
}

// ---- DeviceArray -------------------------------------------------------------------------

class DeviceArray {
 public:
  DeviceArray(std::vector<int64_t> shape, DType dtype, int device)
      : shape_(std::move(shape)), dtype_(dtype), device_(device) {
    nbytes_ = dtype_size(dtype);
    for (int64_t s : shape_) nbytes_ *= s;
    ptr_ = csi::cuda::device_alloc(nbytes_, device_);
  }
  ~DeviceArray() { csi::cuda::device_free(ptr_, device_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  static std::unique_ptr<DeviceArray> from_host(const py::array& arr, int device) {
    const DType t = dtype_of(arr.dtype());
    if (t == DType::kOther)
      throw py::type_error("DeviceArray holds float32, float16 or int8 (got " + std::string(py::str(arr.dtype())) +
                           ")");
    if (arr.ndim() < 1) throw py::value_error("DeviceArray needs at least one dimension");
    if (!is_c_contiguous(arr)) throw py::value_error("DeviceArray.from_host needs a C-contiguous array (np.ascontiguousarray)");
    check_device(device);
    std::vector<int64_t> shape;
    for (py::ssize_t i = 0; i < arr.ndim(); ++i) shape.push_back(int64_t(arr.shape(i)));
    auto out = std::make_unique<DeviceArray>(std::move(shape), t, device);
    const void* src = arr.data();
    {
      py::gil_scoped_release release;
      csi::cuda::copy_to_device(out->ptr_, src, out->nbytes_, device);
    }
    return out;
  }

  py::array to_host() const {
    std::vector<py::ssize_t> shape(shape_.begin(), shape_.end());
    py::array out(py::dtype(dtype_name(dtype_)), shape);
    void* dst = out.mutable_data();
    {
      py::gil_scoped_release release;
      csi::cuda::copy_to_host(dst, ptr_, nbytes_, device_);
    }
    return out;
  }

  py::tuple shape() const {
    py::tuple t(shape_.size());
    for (size_t i = 0; i < shape_.size(); ++i) t[i] = shape_[i];
    return t;
  }

  py::dict cuda_array_interface() const {
    py::dict d;
    d["shape"] = shape();
    d["typestr"] = typestr_of(dtype_);
    d["data"] = py::make_tuple(reinterpret_cast<uintptr_t>(ptr_), false);
    d["strides"] = py::none();
    d["version"] = 3;
    d["stream"] = py::none();  // from_host copies synchronously: the data is ready
    return d;
  }

  std::string dtype() const { return dtype_name(dtype_); }
  int device() const { return device_; }
  int64_t nbytes() const { return nbytes_; }
  uintptr_t ptr() const { return reinterpret_cast<uintptr_t>(ptr_); }

  static void check_device(int device) {
    const int count = csi::cuda::device_count();
    if (device < 0 || device >= count)
      throw py::value_error("cuda:" + std::to_string(device) + " requested but " + std::to_string(count) +
                            " CUDA device(s) are usable" +
                            (count == 0 ? " (" + csi::cuda::last_error() + ")" : std::string()));
  }

 private:
  std::vector<int64_t> shape_;
  DType dtype_;
  int device_;
  int64_t nbytes_ = 0;
  void* ptr_ = nullptr;
};

// ---- info ----------------------------------------------------------------------------------

py::list arch_list() {
  py::list out;
  std::string s = CSI_CUDA_ARCHS;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t end = s.find(';', start);
    const std::string item = s.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (!item.empty()) out.append(item);
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

py::dict build_info() {
  py::dict d;
  py::list archs = arch_list();
  d["archs"] = archs;
  d["ptx"] = archs.empty() ? py::object(py::none()) : py::object(archs[archs.size() - 1]);
  d["nvcc"] = CSI_NVCC_VERSION;
  d["cudart"] = "static";
  d["compiler"] = CSI_COMPILER;
  d["max_k"] = csi::topk::kMaxK;
  d["runtime_version"] = csi::cuda::runtime_version();
  d["driver_version"] = csi::cuda::driver_version();
  d["thread_safety"] = "concurrent: every call owns its streams and buffers";
  return d;
}

py::dict device_info(int device) {
  const csi::cuda::DeviceInfo i = csi::cuda::device_info(device);
  py::dict d;
  d["index"] = device;
  d["name"] = i.name;
  d["compute_capability"] = std::to_string(i.major) + "." + std::to_string(i.minor);
  d["total_memory"] = i.total_memory;
  d["free_memory"] = i.free_memory;
  d["multiprocessors"] = i.multiprocessors;
  d["l2_cache_bytes"] = i.l2_cache_bytes;
  d["memory_bus_width"] = i.memory_bus_width;
  d["memory_clock_khz"] = i.memory_clock_khz;
  // Theoretical peak: double data rate x bus width.
  d["theoretical_bandwidth"] = 2.0 * double(i.memory_clock_khz) * 1e3 * double(i.memory_bus_width) / 8.0;
  d["shared_memory_per_block_optin"] = i.shared_memory_per_block_optin;
  d["shared_memory_per_multiprocessor"] = i.shared_memory_per_multiprocessor;
  d["max_threads_per_multiprocessor"] = i.max_threads_per_multiprocessor;
  d["pci_bus_id"] = i.pci_bus_id;
  d["pci_device_id"] = i.pci_device_id;
  d["memory_pools_supported"] = i.memory_pools_supported;
  return d;
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "csi CUDA ranking kernels (fused distance + exact top-k), device queries and DeviceArray";
  py::register_exception<csi::topk::NonFiniteError>(m, "NonFiniteError", PyExc_ValueError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const csi::cuda::CudaError& e) {
      PyErr_SetString(e.out_of_memory() ? PyExc_MemoryError : PyExc_RuntimeError, e.what());
    }
  });

  m.attr("MAX_K") = csi::topk::kMaxK;

  m.def("device_count", &csi::cuda::device_count,
        "Number of usable CUDA devices; 0 (never an exception) without a driver or GPU (see last_error()).");
  m.def("last_error", &csi::cuda::last_error, "Why device_count() last returned 0 ('' otherwise).");
  m.def("device_info", &device_info, py::arg("device") = 0, "Properties of one CUDA device as a dict.");
  m.def("build_info", &build_info, "How this module was built (archs, PTX, nvcc, static cudart, versions).");
  m.def(
      "copy_bandwidth",
      [](int64_t nbytes, int repeats, int device) {
        DeviceArray::check_device(device);
        py::gil_scoped_release release;
        return csi::cuda::copy_bandwidth(nbytes, repeats, device);
      },
      py::arg("nbytes") = int64_t(1) << 30, py::arg("repeats") = 20, py::arg("device") = 0,
      "Median device-to-device cudaMemcpy rate in bytes/s, counting bytes read + written (event-timed).");

  m.def(
      "topk",
      [](const py::object& queries, const py::object& refs, const py::object& scales, int64_t k,
         const std::string& metric, int device) {
        return topk_impl(queries, refs, scales, k, metric, device, 0, 0, 0, 0, false);
      },
      py::arg("queries"), py::arg("refs"), py::arg("scales"), py::arg("k"), py::arg("metric"), py::arg("device") = 0,
      "Exact top-k on the GPU. queries: float32 [Q, D] (numpy or __cuda_array_interface__); refs: float32/float16/"
      "int8 [N, D] (host arrays are streamed, device arrays used in place); scales: float32 [N] for int8 else None. "
      "Returns host (scores float32 [Q, k], indices int64 [Q, k]), best first, ties to the lower index.");
  m.def("_topk_with_stats", &topk_impl, py::arg("queries"), py::arg("refs"), py::arg("scales"), py::arg("k"),
        py::arg("metric"), py::arg("device") = 0, py::arg("cap") = 0, py::arg("slab_rows") = 0,
        py::arg("max_chunk") = 0, py::arg("budget_bytes") = 0, py::arg("with_stats") = true,
        "topk with test hooks (candidate capacity, host slab rows, chunk rows, block budget); returns "
        "(scores, indices, stats).");
  m.def("_emulate_topk", &emulate_topk, py::arg("queries"), py::arg("refs"), py::arg("scales"), py::arg("k"),
        py::arg("metric"), py::arg("cap") = 0, py::arg("slab_rows") = 0, py::arg("max_chunk") = 0,
        py::arg("budget_bytes") = int64_t(1) << 30,
        "CPU emulation of the CUDA top-k (same orchestration, scalar scoring); returns (scores, indices, stats).");
  m.def(
      "_split_query",
      [](const py::array_t<float, py::array::c_style | py::array::forcecast>& q) {
        const int64_t d = q.shape(0);
        py::array_t<float> hi(d), lo(d);
        const int e = csi::topk::split_query(q.data(), d, hi.mutable_data(), lo.mutable_data());
        return py::make_tuple(hi, lo, e);
      },
      py::arg("q"), "The fp16 hi/lo split of one query: (hi, lo, e) with q * 2^e ~= hi + lo.");
  m.def(
      "_encode_key", [](float score, uint32_t index) { return csi::topk::encode_key(score, index); },
      py::arg("score"), py::arg("index"));
  m.def(
      "_decode_key",
      [](uint64_t key) { return py::make_tuple(csi::topk::key_score(key), csi::topk::key_index(key)); },
      py::arg("key"));
  m.def(
      "_plan",
      [](int64_t nq, int64_t n, int64_t d, int64_t k, int64_t budget, int64_t slab_rows, int64_t cap,
         int64_t max_chunk) {
        const csi::topk::Plan p = csi::topk::make_plan(nq, n, d, k, budget, slab_rows, cap, max_chunk);
        py::dict out = plan_dict(p);
        out["bytes_per_query"] = csi::topk::bytes_per_query(k, p.cap, d);
        return out;
      },
      py::arg("nq"), py::arg("n"), py::arg("d"), py::arg("k"), py::arg("budget_bytes"), py::arg("slab_rows") = 0,
      py::arg("cap") = 0, py::arg("max_chunk") = 0);

  py::class_<DeviceArray>(m, "DeviceArray",
                          "A C-contiguous float32/float16/int8 array in CUDA device memory (freed with the object); "
                          "exposes __cuda_array_interface__ v3.")
      .def_static("from_host", &DeviceArray::from_host, py::arg("array"), py::arg("device") = 0,
                  "Copies a C-contiguous host array to newly allocated device memory.")
      .def("to_host", &DeviceArray::to_host, "Copies the contents back into a new numpy array.")
      .def_property_readonly("shape", &DeviceArray::shape)
      .def_property_readonly("dtype", &DeviceArray::dtype)
      .def_property_readonly("device", &DeviceArray::device)
      .def_property_readonly("nbytes", &DeviceArray::nbytes)
      .def_property_readonly("ptr", &DeviceArray::ptr)
      .def_property_readonly("__cuda_array_interface__", &DeviceArray::cuda_array_interface)
      .def("__repr__", [](const DeviceArray& a) {
        std::string s = "DeviceArray(shape=(";
        py::tuple sh = a.shape();
        for (size_t i = 0; i < sh.size(); ++i) s += (i ? ", " : "") + std::string(py::str(sh[i]));
        if (sh.size() == 1) s += ",";
        return s + "), dtype=" + a.dtype() + ", device=cuda:" + std::to_string(a.device()) + ")";
      });
}

// Kernel bodies shared by every ISA variant. Not a normal header: include it once, from a
// kernels_<isa>.cpp file, inside that file's own namespace, after defining
//
//   vf                     SIMD register of W fp32 lanes, and constexpr int W
//   vzero vload vstore vbcast vfma vadd vsub vmul vhsum vgt_mask
//   vload_f32 vload_f16 vload_i8           W storage elements -> fp32 lanes
//   transpose(vf r[W])                     in-register W x W transpose
//   constexpr int QR, NRV                  GEMM tile: QR query rows x NRV*W reference lanes
//   constexpr int QR_STEP                  shorter last tiles are multiples of this (QR/QR_STEP <= 3)
//   constexpr int stream_rows(int nq, int elem_bytes)  references per streaming step
//
// Everything here must stay free of std:: templates: this code is compiled with wide-vector
// flags, and a shared (weak) template instantiation could be picked by the generic build.

constexpr int NR = NRV * W;

template <class T>
inline vf load_storage(const T* p);
template <>
inline vf load_storage<float>(const float* p) { return vload_f32(p); }
template <>
inline vf load_storage<uint16_t>(const uint16_t* p) { return vload_f16(p); }
template <>
inline vf load_storage<int8_t>(const int8_t* p) { return vload_i8(p); }

// Loads n < W elements, zero filling the rest of the register.
template <class T>
inline vf load_storage_partial(const T* p, int64_t n) {
  T tmp[W];
  for (int i = 0; i < W; ++i) tmp[i] = T(0);
  for (int64_t i = 0; i < n; ++i) tmp[i] = p[i];
  return load_storage<T>(tmp);
}

// ----------------------------------------------------------------------------------------
// Streaming scores: QT queries against RT reference rows at a time, read in storage type.

// Software prefetch distance of the streaming scan. Interleaved reads of RT rows defeat the
// hardware prefetcher; measured on Zen 4 (fp16, D = 64..1024) this restores ~95% of a plain
// sequential read, against ~35% without it.
constexpr int64_t kStreamPrefetchBytes = 16384;

template <int QT, int RT, bool L2, class T>
inline void stream_block(const float* Q, int64_t dq, int64_t d, const T* R, const float* scales, int64_t j,
                         float* S, int64_t lds) {
  const int64_t dv = d - d % W;
  vf acc[QT][RT];
  vf nrm[RT];
  for (int q = 0; q < QT; ++q)
    for (int r = 0; r < RT; ++r) acc[q][r] = vzero();
  for (int r = 0; r < RT; ++r) nrm[r] = vzero();

  const T* rows = R + j * d;
  // Prefetch this block's bytes kStreamPrefetchBytes ahead, spread over the d loop.
  const char* pf = reinterpret_cast<const char*>(rows) + kStreamPrefetchBytes;
  const int64_t pf_lines = (RT * d * int64_t(sizeof(T)) + 63) / 64;
  const int64_t pf_per_step = (pf_lines + (d + W - 1) / W - 1) / ((d + W - 1) / W);
  int64_t pf_next = 0;
  for (int64_t p = 0; p < dv; p += W) {
    for (int64_t l = 0; l < pf_per_step && pf_next < pf_lines; ++l, ++pf_next) __builtin_prefetch(pf + pf_next * 64);
    vf x[RT];
#pragma GCC unroll 8
    for (int r = 0; r < RT; ++r) x[r] = load_storage<T>(rows + r * d + p);
#pragma GCC unroll 8
    for (int q = 0; q < QT; ++q) {
      const vf qv = vload(Q + q * dq + p);
#pragma GCC unroll 8
      for (int r = 0; r < RT; ++r) acc[q][r] = vfma(qv, x[r], acc[q][r]);
    }
    if (L2) {
#pragma GCC unroll 8
      for (int r = 0; r < RT; ++r) nrm[r] = vfma(x[r], x[r], nrm[r]);
    }
  }
  if (dv < d) {
    vf x[RT];
    for (int r = 0; r < RT; ++r) x[r] = load_storage_partial<T>(rows + r * d + dv, d - dv);
    for (int q = 0; q < QT; ++q) {
      const vf qv = vload(Q + q * dq + dv);
      for (int r = 0; r < RT; ++r) acc[q][r] = vfma(qv, x[r], acc[q][r]);
    }
    if (L2)
      for (int r = 0; r < RT; ++r) nrm[r] = vfma(x[r], x[r], nrm[r]);
  }
  for (int r = 0; r < RT; ++r) {
    const float sc = scales ? scales[j + r] : 1.0f;
    const float nn = L2 ? vhsum(nrm[r]) * sc * sc : 0.0f;
    for (int q = 0; q < QT; ++q) {
      const float dot = vhsum(acc[q][r]) * sc;
      S[q * lds + j + r] = L2 ? 2.0f * dot - nn : dot;
    }
  }
}

template <int QT, bool L2, class T>
void stream_typed(const float* Q, int64_t dq, int64_t d, const T* R, const float* scales, int64_t n, float* S,
                  int64_t lds) {
  constexpr int RT = stream_rows(QT, int(sizeof(T)));
  int64_t j = 0;
  for (; j + RT <= n; j += RT) stream_block<QT, RT, L2, T>(Q, dq, d, R, scales, j, S, lds);
  for (; j < n; ++j) stream_block<QT, 1, L2, T>(Q, dq, d, R, scales, j, S, lds);
}

template <int QT, bool L2>
void stream_dispatch_type(const float* Q, int64_t dq, int64_t d, const void* R, Storage st, const float* scales,
                          int64_t n, float* S, int64_t lds) {
  switch (st) {
    case Storage::kF32:
      stream_typed<QT, L2>(Q, dq, d, static_cast<const float*>(R), scales, n, S, lds);
      break;
    case Storage::kF16:
      stream_typed<QT, L2>(Q, dq, d, static_cast<const uint16_t*>(R), scales, n, S, lds);
      break;
    case Storage::kI8:
      stream_typed<QT, L2>(Q, dq, d, static_cast<const int8_t*>(R), scales, n, S, lds);
      break;
  }
}

template <int QT>
void stream_dispatch_metric(const float* Q, int64_t dq, int64_t d, const void* R, Storage st,
                            const float* scales, int64_t n, bool l2, float* S, int64_t lds) {
  if (l2)
    stream_dispatch_type<QT, true>(Q, dq, d, R, st, scales, n, S, lds);
  else
    stream_dispatch_type<QT, false>(Q, dq, d, R, st, scales, n, S, lds);
}

void stream_scores(const float* Q, int nq_pad, int64_t dq, int64_t d, const void* R, Storage st,
                   const float* scales, int64_t n, bool l2, float* S, int64_t lds) {
  switch (nq_pad) {
    case 1: stream_dispatch_metric<1>(Q, dq, d, R, st, scales, n, l2, S, lds); break;
    case 2: stream_dispatch_metric<2>(Q, dq, d, R, st, scales, n, l2, S, lds); break;
    case 4: stream_dispatch_metric<4>(Q, dq, d, R, st, scales, n, l2, S, lds); break;
    default: stream_dispatch_metric<8>(Q, dq, d, R, st, scales, n, l2, S, lds); break;
  }
}

// ----------------------------------------------------------------------------------------
// Packing.

void pack_queries(const float* Q, int64_t nq, int64_t d, float* Qp) {
  for (int64_t t0 = 0; t0 < nq; t0 += QR) {
    const int64_t left = nq - t0;
    const int64_t rows = left >= QR ? QR : (left + QR_STEP - 1) / QR_STEP * QR_STEP;
    float* dst = Qp + t0 * d;
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t q = t0 + i;
      for (int64_t p = 0; p < d; ++p) dst[p * rows + i] = q < nq ? Q[q * d + p] : 0.0f;
    }
  }
}

// Packs W consecutive rows (the first `rows` real, the rest zero) into lanes
// [lane0, lane0 + W) of one panel, converting and scaling, and writes their squared norms.
template <class T, bool SCALED, bool NORMS>
inline void pack_group(const T* R, const float* scales, int64_t rows, int64_t d, float* panel, int lane0,
                       float* norms) {
  const int64_t dv = d - d % W;
  vf sc[W];
  vf nrm[W];
  for (int r = 0; r < W; ++r) {
    if (SCALED) sc[r] = vbcast(r < rows ? scales[r] : 0.0f);
    nrm[r] = vzero();
  }
  if (rows == W) {  // hot path: full group, full-width chunks
    const char* pf = reinterpret_cast<const char*>(R) + kStreamPrefetchBytes;
    const int64_t pf_lines = (W * d * int64_t(sizeof(T)) + 63) / 64;
    const int64_t pf_per_step = (pf_lines + dv / W - 1) / (dv / W > 0 ? dv / W : 1);
    int64_t pf_next = 0;
    for (int64_t p = 0; p < dv; p += W) {
      for (int64_t l = 0; l < pf_per_step && pf_next < pf_lines; ++l, ++pf_next) __builtin_prefetch(pf + pf_next * 64);
      vf x[W];
#pragma GCC unroll 16
      for (int r = 0; r < W; ++r) {
        x[r] = load_storage<T>(R + r * d + p);
        if (SCALED) x[r] = vmul(x[r], sc[r]);
        if (NORMS) nrm[r] = vfma(x[r], x[r], nrm[r]);
      }
      transpose(x);
#pragma GCC unroll 16
      for (int t = 0; t < W; ++t) vstore(panel + (p + t) * NR + lane0, x[t]);
    }
  }
  for (int64_t p = rows == W ? dv : 0; p < d; p += W) {
    const int64_t len = p < dv ? W : d - dv;
    vf x[W];
    for (int r = 0; r < W; ++r) {
      if (r < rows) {
        x[r] = len == W ? load_storage<T>(R + r * d + p) : load_storage_partial<T>(R + r * d + p, len);
        if (SCALED) x[r] = vmul(x[r], sc[r]);
      } else {
        x[r] = vzero();
      }
      if (NORMS) nrm[r] = vfma(x[r], x[r], nrm[r]);
    }
    transpose(x);
    for (int64_t t = 0; t < len; ++t) vstore(panel + (p + t) * NR + lane0, x[t]);
  }
  if (NORMS)
    for (int r = 0; r < W; ++r) norms[lane0 + r] = vhsum(nrm[r]);
}

template <class T, bool SCALED, bool NORMS>
void pack_refs_typed(const T* R, const float* scales, int64_t n, int64_t d, float* Rp, float* norms) {
  const int64_t panels = (n + NR - 1) / NR;
  for (int64_t pnl = 0; pnl < panels; ++pnl) {
    float* panel = Rp + pnl * d * NR;
    for (int g = 0; g < NRV; ++g) {
      const int64_t row0 = pnl * NR + g * W;
      int64_t rows = n - row0;
      rows = rows < 0 ? 0 : (rows > W ? W : rows);
      const T* src = R + (rows > 0 ? row0 * d : 0);
      const float* sc = SCALED && rows > 0 ? scales + row0 : nullptr;
      pack_group<T, SCALED, NORMS>(src, sc, rows, d, panel, g * W, NORMS ? norms + pnl * NR : nullptr);
    }
  }
}

template <class T>
void pack_refs_dispatch(const T* R, const float* scales, int64_t n, int64_t d, bool l2, float* Rp, float* norms) {
  if (scales) {
    if (l2)
      pack_refs_typed<T, true, true>(R, scales, n, d, Rp, norms);
    else
      pack_refs_typed<T, true, false>(R, scales, n, d, Rp, norms);
  } else {
    if (l2)
      pack_refs_typed<T, false, true>(R, scales, n, d, Rp, norms);
    else
      pack_refs_typed<T, false, false>(R, scales, n, d, Rp, norms);
  }
}

void pack_refs(const void* R, Storage st, const float* scales, int64_t n, int64_t d, bool l2, float* Rp,
               float* norms) {
  switch (st) {
    case Storage::kF32: pack_refs_dispatch(static_cast<const float*>(R), scales, n, d, l2, Rp, norms); break;
    case Storage::kF16: pack_refs_dispatch(static_cast<const uint16_t*>(R), scales, n, d, l2, Rp, norms); break;
    case Storage::kI8: pack_refs_dispatch(static_cast<const int8_t*>(R), scales, n, d, l2, Rp, norms); break;
  }
}

// ----------------------------------------------------------------------------------------
// GEMM micro-kernel: QR x NR scores per panel, accumulated in registers over all of d.

template <int ROWS, bool L2>
void gemm_typed(const float* Qp, const float* Rp, int64_t npanels, int64_t d, const float* norms, float* S,
                int64_t lds, const char* prefetch, int64_t prefetch_bytes) {
  const int64_t pf_lines = (prefetch_bytes + 63) / 64;
  const int64_t pf_per_panel = (pf_lines + npanels - 1) / npanels;
  int64_t pf_next = 0;
  for (int64_t pnl = 0; pnl < npanels; ++pnl) {
    for (int64_t l = 0; l < pf_per_panel && pf_next < pf_lines; ++l, ++pf_next)
      __builtin_prefetch(prefetch + pf_next * 64, 0, 2);
    const float* rp = Rp + pnl * d * NR;
    vf acc[ROWS][NRV];
#pragma GCC unroll 16
    for (int i = 0; i < ROWS; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NRV; ++v) acc[i][v] = vzero();
    for (int64_t p = 0; p < d; ++p) {
      vf b[NRV];
#pragma GCC unroll 4
      for (int v = 0; v < NRV; ++v) b[v] = vload(rp + p * NR + v * W);
      const float* a = Qp + p * ROWS;
#pragma GCC unroll 16
      for (int i = 0; i < ROWS; ++i) {
        const vf av = vbcast(a[i]);
#pragma GCC unroll 4
        for (int v = 0; v < NRV; ++v) acc[i][v] = vfma(av, b[v], acc[i][v]);
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < ROWS; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NRV; ++v) {
        vf s = acc[i][v];
        if (L2) s = vsub(vadd(s, s), vload(norms + pnl * NR + v * W));
        vstore(S + i * lds + pnl * NR + v * W, s);
      }
  }
}

template <int ROWS>
void gemm_rows(const float* Qp, const float* Rp, int64_t npanels, int64_t d, const float* norms, float* S,
               int64_t lds, const char* prefetch, int64_t prefetch_bytes) {
  if (norms)
    gemm_typed<ROWS, true>(Qp, Rp, npanels, d, norms, S, lds, prefetch, prefetch_bytes);
  else
    gemm_typed<ROWS, false>(Qp, Rp, npanels, d, norms, S, lds, prefetch, prefetch_bytes);
}

// Tile heights QR_STEP, 2 QR_STEP, ..., QR (at most three), so a short last tile of queries
// costs what it holds rather than a full tile.
void gemm_scores(const float* Qp, int rows, const float* Rp, int64_t npanels, int64_t d, const float* norms,
                 float* S, int64_t lds, const void* prefetch, int64_t prefetch_bytes) {
  const char* pf = static_cast<const char*>(prefetch);
  static_assert(QR % QR_STEP == 0 && QR / QR_STEP <= 3, "tile heights");
  if (rows == QR)
    gemm_rows<QR>(Qp, Rp, npanels, d, norms, S, lds, pf, prefetch_bytes);
  else if (rows == QR_STEP)
    gemm_rows<QR_STEP>(Qp, Rp, npanels, d, norms, S, lds, pf, prefetch_bytes);
  else
    gemm_rows<(QR / QR_STEP == 3 ? 2 * QR_STEP : QR)>(Qp, Rp, npanels, d, norms, S, lds, pf, prefetch_bytes);
}

// ----------------------------------------------------------------------------------------
// Threshold filter: the only selection work on the hot path is one compare per score.

int64_t filter(const float* s, int64_t n, float thr, int64_t base, Candidate* out, int* nonfinite) {
  const vf t = vbcast(thr);
  const vf zero = vzero();
  vf bad = vzero();  // stays 0 unless a lane is NaN/Inf (x * 0 is NaN exactly then)
  int64_t count = 0;
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    const vf v = vload(s + j);
    bad = vadd(bad, vmul(v, zero));
    unsigned mask = vgt_mask(v, t);
    while (mask) {
      const int b = __builtin_ctz(mask);
      out[count].score = s[j + b];
      out[count].index = base + j + b;
      ++count;
      mask &= mask - 1;
    }
  }
  int tail_bad = 0;
  for (; j < n; ++j) {
    const float x = s[j];
    if (!(x - x == 0.0f)) tail_bad = 1;
    if (x > thr) {
      out[count].score = x;
      out[count].index = base + j;
      ++count;
    }
  }
  const float b = vhsum(bad);
  if (tail_bad || !(b == 0.0f)) *nonfinite = 1;
  return count;
}

const KernelTable* make_table(const char* name) {
  static const KernelTable table = {name,      W,         QR,          QR_STEP, NR,        stream_scores,
                                    pack_queries, pack_refs, gemm_scores, filter};
  return &table;
}

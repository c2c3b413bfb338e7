#include "ops/pooling.h"

#include "common/small_work.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#ifdef __AVX__
#include <immintrin.h>
#endif

#include "common/finite.h"

namespace recis {
namespace {

// How many values ahead the row gathers prefetch. 12 covers the latency of hosts whose random
// DRAM reads take ~200 ns (at 6, one such host ran the step ~5 % slower; others were neutral).
constexpr int64_t kPrefetchAhead = 12;

inline void prefetch_row(const float* p, int64_t dim) {
  for (int64_t j = 0; j < dim; j += 16) __builtin_prefetch(p + j);
}

// Pooled outputs larger than this are written with streaming (non-temporal) stores: they would
// leave the cache before anyone reads them, and a streaming store skips reading each output line
// in before writing it (27 MB at the default benchmark batch, about 0.9 ms a step on 2 cores).
constexpr int64_t kStreamOutputBytes = int64_t(16) << 20;

#ifdef __AVX__
// Writes n floats (a multiple of 16) from src to the 64-byte aligned dst, bypassing the cache.
inline void stream_row(float* dst, const float* src, int64_t n) {
#ifdef __AVX512F__
  for (int64_t j = 0; j < n; j += 16) _mm512_stream_ps(dst + j, _mm512_loadu_ps(src + j));
#else
  for (int64_t j = 0; j < n; j += 8) _mm256_stream_ps(dst + j, _mm256_loadu_ps(src + j));
#endif
}
#endif

// f(bag k, its feature, its sample) for the bags [kb, ke) of the features a call reads (ns >= 0),
// without a division per bag. Unpooled layouts (one bag per value) read every bag, as feature 0.
template <class F>
void for_bags(const BagLayout& L, int64_t kb, int64_t ke, F&& f) {
  if (L.combiner == Combiner::kNone) {
    for (int64_t k = kb; k < ke; ++k) f(k, int64_t(0), k);
    return;
  }
  if (kb >= ke) return;  // also batch 0
  for (int64_t fe = kb / L.batch, k = kb; k < ke; ++fe) {
    const int64_t end = std::min(ke, (fe + 1) * L.batch);
    if (L.feature_ns[fe] < 0) {
      k = end;
      continue;
    }
    for (; k < end; ++k) f(k, fe, k - fe * L.batch);
  }
}

// D > 0 fixes the width at compile time so the accumulator lives in vector registers.
template <int D>
void pool_bags(const BagLayout& L, const float* const* rows, const int32_t* inverse, int64_t dim_rt, float* out,
               int64_t kb, int64_t ke, bool stream) {
  const int64_t dim = D > 0 ? D : dim_rt;
  float acc_buf[D > 0 ? D : 1];
  std::vector<float> acc_dyn(D > 0 ? 0 : dim);
  float* acc = D > 0 ? acc_buf : acc_dyn.data();
  const int64_t vend = L.offsets[ke];
  for_bags(L, kb, ke, [&](int64_t k, int64_t f, int64_t b) {
    const int64_t s = L.offsets[k], e = L.offsets[k + 1];
    for (int64_t j = 0; j < dim; ++j) acc[j] = 0.f;
    for (int64_t i = s; i < e; ++i) {
      if (i + kPrefetchAhead < vend && inverse[i + kPrefetchAhead] >= 0)
        prefetch_row(rows[inverse[i + kPrefetchAhead]], dim);
      const float* r = rows[inverse[i]];
      const float w = L.weights ? L.weights[i] : 1.f;
      for (int64_t j = 0; j < dim; ++j) acc[j] += w * r[j];
    }
    if (L.combiner == Combiner::kMean && e > s) {
      const float inv = 1.f / static_cast<float>(e - s);
      for (int64_t j = 0; j < dim; ++j) acc[j] *= inv;
    }
    float* o = out + b * L.out_cols + L.col_offsets[f];
#ifdef __AVX__
    if (D > 0 && D % 16 == 0 && stream && (reinterpret_cast<uintptr_t>(o) & 63) == 0) {
      stream_row(o, acc, dim);
      return;
    }
#endif
    for (int64_t j = 0; j < dim; ++j) o[j] = acc[j];
  });
#ifdef __AVX__
  if (stream) _mm_sfence();  // streaming stores are weakly ordered: publish them before returning
#endif
}

// Sums the upstream gradients of CSR row r into g; returns whether g is finite.
// Prefetches upstream rows a few positions ahead, up to CSR position `prefetch_end`.
template <int D>
bool grad_one(const int64_t* csr, const int64_t* src, const float* scale, const float* grad_out, int64_t dim_rt,
              int64_t r, int64_t prefetch_end, float* g) {
  const int64_t dim = D > 0 ? D : dim_rt;
  // The sum runs in a local accumulator (registers when D is fixed): summed through g, every
  // addition would load and store g, since the compiler cannot rule out that g aliases grad_out.
  float acc_buf[D > 0 ? D : 1];
  float* acc = D > 0 ? acc_buf : g;
  for (int64_t j = 0; j < dim; ++j) acc[j] = 0.f;
  for (int64_t p = csr[r]; p < csr[r + 1]; ++p) {
    if (p + kPrefetchAhead < prefetch_end) prefetch_row(grad_out + src[p + kPrefetchAhead], dim);
    const float* go = grad_out + src[p];
    const float c = scale[p];
    for (int64_t j = 0; j < dim; ++j) acc[j] += c * go[j];
  }
  if (D > 0)
    for (int64_t j = 0; j < dim; ++j) g[j] = acc[j];
  return all_finite(g, dim);
}

template <class F>
void dispatch_dim(int64_t dim, F&& f) {
  switch (dim) {
    case 8: return f(std::integral_constant<int, 8>{});
    case 16: return f(std::integral_constant<int, 16>{});
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    case 128: return f(std::integral_constant<int, 128>{});
    default: return f(std::integral_constant<int, 0>{});
  }
}

struct BackwardWorkspace {
  std::vector<int64_t> csr, src;
  std::vector<float> scale;
  std::vector<int32_t> order;  // the unique rows by first value: the CSR's row order
  std::vector<std::vector<int32_t>> counts;  // per chunk: counts, then cursors
  std::vector<std::vector<int32_t>> firsts;  // per chunk: the rows it sees first, in value order
  std::vector<int64_t> n_firsts;             // per chunk: how many of firsts[c] are those rows
};

}  // namespace

void pooled_forward(const BagLayout& L, const float* const* rows, const int32_t* inverse, int64_t dim, float* out) {
  if (L.combiner == Combiner::kNone) {
    const int64_t n = L.offsets[L.num_bags];
    at::parallel_for(0, n, grain_for(n, n, 512), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        if (inverse[i] < 0) continue;
        if (i + kPrefetchAhead < e && inverse[i + kPrefetchAhead] >= 0)
          prefetch_row(rows[inverse[i + kPrefetchAhead]], dim);
        const float* r = rows[inverse[i]];
        const float w = L.weights ? L.weights[i] : 1.f;
        float* o = out + i * dim;
        for (int64_t j = 0; j < dim; ++j) o[j] = w * r[j];
      }
    });
    return;
  }
  const bool stream = L.batch * L.out_cols * static_cast<int64_t>(sizeof(float)) > kStreamOutputBytes;
  dispatch_dim(dim, [&](auto d) {
    at::parallel_for(0, L.num_bags, grain_for(L.offsets[L.num_bags], L.num_bags, 256), [&](int64_t kb, int64_t ke) {
      pool_bags<decltype(d)::value>(L, rows, inverse, dim, out, kb, ke, stream);
    });
  });
}

// CSR of value positions per unique row: for each, where its upstream gradient lives (offset
// into grad_out) and how much of it flows back. The rows are laid out in the order of their first
// value (ws.order), which groups them by feature: the backward then reads one feature's block of
// the upstream gradient at a time (a cache-sized working set) instead of all of it at random.
BackwardWorkspace& build_csr(const BagLayout& L, const int32_t* inverse, int64_t n_values, int64_t n_unique,
                             int64_t dim) {
  static thread_local BackwardWorkspace tls;
  BackwardWorkspace& ws = tls;
  if (static_cast<int64_t>(ws.src.size()) < n_values) {
    ws.src.resize(n_values);
    ws.scale.resize(n_values);
  }
  const bool pooled = L.combiner != Combiner::kNone;
  const int64_t bags = pooled ? L.num_bags : n_values;
  // Chunks of bags, one per thread; each counts its values per unique row, then fills its
  // share of every row's CSR range right after the earlier chunks' share (value order).
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), bags / 4096 + 1));
  ws.counts.resize(chunks);
  ws.firsts.resize(chunks);
  ws.n_firsts.resize(chunks);
  auto bag_range = [&](int64_t c) { return std::make_pair(bags * c / chunks, bags * (c + 1) / chunks); };
  auto values_of = [&](int64_t k) {
    return pooled ? std::make_pair(L.offsets[k], L.offsets[k + 1]) : std::make_pair(k, k + 1);
  };
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      std::vector<int32_t>& cnt = ws.counts[c];
      std::vector<int32_t>& first = ws.firsts[c];
      cnt.assign(n_unique, 0);
      // Every value's row is written and kept only at its first sighting, without a branch on
      // that: first sightings come at random (a third of the values at the benchmark's
      // default workload), and a branch would mispredict them. The buffer only grows.
      if (static_cast<int64_t>(first.size()) < n_unique + 1) first.resize(n_unique + 1);
      int64_t n_first = 0;
      const auto [kb, ke] = bag_range(c);
      for_bags(L, kb, ke, [&](int64_t k, int64_t, int64_t) {
        const auto [s, e] = values_of(k);
        for (int64_t i = s; i < e; ++i) {
          const int32_t u = inverse[i];
          if (u < 0) continue;
          first[n_first] = u;
          n_first += cnt[u]++ == 0;
        }
      });
      ws.n_firsts[c] = n_first;
    }
  });
  // The rows in order of first value: each chunk's first sightings, chunk by chunk, minus those
  // an earlier chunk saw; rows no value reaches go last.
  auto seen_before = [&](int32_t u, int64_t chunk) {
    for (int64_t c = 0; c < chunk; ++c)
      if (ws.counts[c][u]) return true;
    return false;
  };
  ws.order.clear();
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t i = 0; i < ws.n_firsts[c]; ++i)
      if (!seen_before(ws.firsts[c][i], c)) ws.order.push_back(ws.firsts[c][i]);
  if (static_cast<int64_t>(ws.order.size()) < n_unique)
    for (int32_t u = 0; u < n_unique; ++u)
      if (!seen_before(u, chunks)) ws.order.push_back(u);
  ws.csr.assign(n_unique + 1, 0);
  for (int64_t r = 0; r < n_unique; ++r) {
    const int32_t u = ws.order[r];
    int64_t at = ws.csr[r];
    for (int64_t c = 0; c < chunks; ++c) {
      const int32_t k = ws.counts[c][u];
      ws.counts[c][u] = static_cast<int32_t>(at);  // becomes the chunk's cursor for row u
      at += k;
    }
    ws.csr[r + 1] = at;
  }
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      std::vector<int32_t>& cursor = ws.counts[c];
      const auto [kb, ke] = bag_range(c);
      for_bags(L, kb, ke, [&](int64_t k, int64_t f, int64_t b) {
        const auto [s, e] = values_of(k);
        int64_t base = k * dim;
        float scale = 1.f;
        if (pooled) {
          base = b * L.out_cols + L.col_offsets[f];
          if (L.combiner == Combiner::kMean && e > s) scale = 1.f / static_cast<float>(e - s);
        }
        for (int64_t i = s; i < e; ++i) {
          if (inverse[i] < 0) continue;
          const int64_t p = cursor[inverse[i]]++;
          ws.src[p] = base;
          ws.scale[p] = L.weights ? scale * L.weights[i] : scale;
        }
      });
    }
  });
  return ws;
}

void unique_row_grads(const BagLayout& L, const float* grad_out, const int32_t* inverse, int64_t n_values,
                      int64_t n_unique, int64_t dim, float* grads, uint8_t* finite) {
  const BackwardWorkspace& ws = build_csr(L, inverse, n_values, n_unique, dim);
  dispatch_dim(dim, [&](auto d) {
    at::parallel_for(0, n_unique, grain_for(n_values, n_unique, 64), [&](int64_t rb, int64_t re) {
      for (int64_t r = rb; r < re; ++r) {
        const int64_t u = ws.order[r];
        finite[u] = grad_one<decltype(d)::value>(ws.csr.data(), ws.src.data(), ws.scale.data(), grad_out, dim, r,
                                                 ws.csr[re], grads + u * dim);
      }
    });
  });
}

void for_each_unique_grad(const BagLayout& L, const float* grad_out, const int32_t* inverse, int64_t n_values,
                          int64_t n_unique, int64_t dim, const GradSink& sink,
                          const std::function<void(int64_t)>& prefetch) {
  const BackwardWorkspace& ws = build_csr(L, inverse, n_values, n_unique, dim);
  constexpr int64_t kRowsAhead = 4;
  dispatch_dim(dim, [&](auto d) {
    at::parallel_for(0, n_unique, grain_for(n_values, n_unique, 64), [&](int64_t rb, int64_t re) {
      std::vector<float> buf(dim);
      for (int64_t r = rb; r < std::min(re, rb + kRowsAhead); ++r) prefetch(ws.order[r]);
      for (int64_t r = rb; r < re; ++r) {
        if (r + kRowsAhead < re) prefetch(ws.order[r + kRowsAhead]);
        const bool finite = grad_one<decltype(d)::value>(ws.csr.data(), ws.src.data(), ws.scale.data(), grad_out, dim,
                                                         r, ws.csr[re], buf.data());
        sink(ws.order[r], buf.data(), finite);
      }
    });
  });
}

}  // namespace recis

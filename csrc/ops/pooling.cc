#include "ops/pooling.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

namespace recis {
namespace {

constexpr int64_t kPrefetchAhead = 6;

inline void prefetch_row(const float* p, int64_t dim) {
  for (int64_t j = 0; j < dim; j += 16) __builtin_prefetch(p + j);
}

// D > 0 fixes the width at compile time so the accumulator lives in vector registers.
template <int D>
void pool_bags(const BagLayout& L, const float* const* rows, const int32_t* inverse, int64_t dim_rt, float* out,
               int64_t kb, int64_t ke) {
  const int64_t dim = D > 0 ? D : dim_rt;
  float acc_buf[D > 0 ? D : 1];
  std::vector<float> acc_dyn(D > 0 ? 0 : dim);
  float* acc = D > 0 ? acc_buf : acc_dyn.data();
  const int64_t vend = L.offsets[ke];
  for (int64_t k = kb; k < ke; ++k) {
    const int64_t f = k / L.batch, b = k - f * L.batch;
    if (L.feature_ns[f] < 0) continue;
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
    for (int64_t j = 0; j < dim; ++j) o[j] = acc[j];
  }
}

template <int D>
void grad_rows(const int64_t* csr, const int64_t* src, const float* scale, const float* grad_out, int64_t dim_rt,
               int64_t ub, int64_t ue, float* grads, uint8_t* finite) {
  const int64_t dim = D > 0 ? D : dim_rt;
  for (int64_t u = ub; u < ue; ++u) {
    float* g = grads + u * dim;
    for (int64_t j = 0; j < dim; ++j) g[j] = 0.f;
    for (int64_t p = csr[u]; p < csr[u + 1]; ++p) {
      if (p + kPrefetchAhead < csr[ue]) prefetch_row(grad_out + src[p + kPrefetchAhead], dim);
      const float* go = grad_out + src[p];
      const float c = scale[p];
      for (int64_t j = 0; j < dim; ++j) g[j] += c * go[j];
    }
    float probe = 0.f;  // NaN iff some element is NaN or +-Inf (Inf * 0 = NaN)
    for (int64_t j = 0; j < dim; ++j) probe += g[j] * 0.f;
    finite[u] = probe == probe;
  }
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
  std::vector<int64_t> csr, cursor, src;
  std::vector<float> scale;
};

}  // namespace

void pooled_forward(const BagLayout& L, const float* const* rows, const int32_t* inverse, int64_t dim, float* out) {
  if (L.combiner == Combiner::kNone) {
    const int64_t n = L.offsets[L.num_bags];
    at::parallel_for(0, n, 512, [&](int64_t b, int64_t e) {
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
  dispatch_dim(dim, [&](auto d) {
    at::parallel_for(0, L.num_bags, 256,
                     [&](int64_t kb, int64_t ke) { pool_bags<decltype(d)::value>(L, rows, inverse, dim, out, kb, ke); });
  });
}

void unique_row_grads(const BagLayout& L, const float* grad_out, const int32_t* inverse, int64_t n_values,
                      int64_t n_unique, int64_t dim, float* grads, uint8_t* finite) {
  static thread_local BackwardWorkspace tls;
  BackwardWorkspace& ws = tls;
  // CSR of value positions per unique row: counts, then an exclusive scan.
  ws.csr.assign(n_unique + 1, 0);
  for (int64_t i = 0; i < n_values; ++i)
    if (inverse[i] >= 0) ++ws.csr[inverse[i] + 1];
  for (int64_t u = 0; u < n_unique; ++u) ws.csr[u + 1] += ws.csr[u];
  ws.cursor.assign(ws.csr.begin(), ws.csr.end() - 1);
  if (static_cast<int64_t>(ws.src.size()) < n_values) {
    ws.src.resize(n_values);
    ws.scale.resize(n_values);
  }
  // For every value: where its upstream gradient lives and how much of it flows back.
  const bool pooled = L.combiner != Combiner::kNone;
  const int64_t bags = pooled ? L.num_bags : n_values;
  for (int64_t k = 0; k < bags; ++k) {
    if (pooled && L.feature_ns[k / L.batch] < 0) continue;
    if (!pooled && inverse[k] < 0) continue;
    const int64_t s = pooled ? L.offsets[k] : k, e = pooled ? L.offsets[k + 1] : k + 1;
    int64_t base;
    float c = 1.f;
    if (pooled) {
      const int64_t f = k / L.batch, b = k - f * L.batch;
      base = b * L.out_cols + L.col_offsets[f];
      if (L.combiner == Combiner::kMean && e > s) c = 1.f / static_cast<float>(e - s);
    } else {
      base = k * dim;
    }
    for (int64_t i = s; i < e; ++i) {
      const int64_t p = ws.cursor[inverse[i]]++;
      ws.src[p] = base;
      ws.scale[p] = L.weights ? c * L.weights[i] : c;
    }
  }
  dispatch_dim(dim, [&](auto d) {
    at::parallel_for(0, n_unique, 64, [&](int64_t ub, int64_t ue) {
      grad_rows<decltype(d)::value>(ws.csr.data(), ws.src.data(), ws.scale.data(), grad_out, dim, ub, ue, grads,
                                    finite);
    });
  });
}

}  // namespace recis

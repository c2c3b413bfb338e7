#include "optim/sparse_update.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <iterator>

#include "common/lane_sum.h"

namespace recis {

const OptimLayout& layout_of(OptimKind kind) {
  const auto k = static_cast<size_t>(kind);
  TORCH_CHECK_VALUE(k < std::size(kOptimLayouts), "unknown optimizer kind ", static_cast<int>(kind));
  return kOptimLayouts[k];
}

int64_t slot_width_for(OptimKind kind, int64_t dim) {
  const OptimLayout& L = layout_of(kind);
  return L.slots_per_dim * dim + L.slots_per_row;
}

size_t hyper_size_for(OptimKind kind) {
  const auto& h = layout_of(kind).hyper;
  return static_cast<size_t>(std::find(h.begin(), h.end(), nullptr) - h.begin());
}

namespace {

struct Sgd {
  float lr, wd;
  explicit Sgd(const std::vector<double>& h) : lr(h[0]), wd(h[1]) {}
  void operator()(float* w, float*, const float* g, int64_t d) const {
    for (int64_t j = 0; j < d; ++j) w[j] -= lr * (g[j] + wd * w[j]);
  }
};

// torch.optim.Adagrad: clr = lr / (1 + (step - 1) * lr_decay).
struct Adagrad {
  float clr, wd, eps;
  explicit Adagrad(const std::vector<double>& h)
      : clr(h[0] / (1.0 + (h[4] - 1.0) * h[1])), wd(h[2]), eps(h[3]) {}
  void operator()(float* w, float* s, const float* g, int64_t d) const {
    for (int64_t j = 0; j < d; ++j) {
      const float gj = g[j] + wd * w[j];
      s[j] += gj * gj;
      w[j] -= clr * gj / (std::sqrt(s[j]) + eps);
    }
  }
};

// Row-wise Adagrad (fbgemm EXACT_ROWWISE_ADAGRAD): one accumulator of mean(g^2) per row.
struct RowwiseAdagrad {
  float lr, wd, eps;
  explicit RowwiseAdagrad(const std::vector<double>& h) : lr(h[0]), wd(h[1]), eps(h[2]) {}
  void operator()(float* w, float* s, const float* g, int64_t d) const {
    // The sum of squares in lanes (lane_sum's order): it vectorizes, and the Triton twin sums
    // the same way.
    constexpr int64_t kLanes = kRowwiseAdagradLanes;
    const float sq = wd == 0.f ? lane_sum<kLanes>(d, [g](int64_t j) { return g[j] * g[j]; })
                               : lane_sum<kLanes>(d, [&](int64_t j) {
                                   const float gj = g[j] + wd * w[j];
                                   return gj * gj;
                                 });
    s[0] += sq / static_cast<float>(d);
    const float mult = lr / (std::sqrt(s[0]) + eps);
    if (wd == 0.f) {
      for (int64_t j = 0; j < d; ++j) w[j] -= mult * g[j];
    } else {
      for (int64_t j = 0; j < d; ++j) w[j] -= mult * (g[j] + wd * w[j]);
    }
  }
};

// torch.optim.Adam / AdamW applied lazily to the rows present in the step.
template <bool kDecoupled>
struct Adam {
  float lr, b1, b2, eps, wd, step_size, inv_sqrt_bc2;
  explicit Adam(const std::vector<double>& h) : lr(h[0]), b1(h[1]), b2(h[2]), eps(h[3]), wd(h[4]) {
    const double bc1 = 1.0 - std::pow(h[1], h[5]), bc2 = 1.0 - std::pow(h[2], h[5]);
    step_size = h[0] / bc1;
    inv_sqrt_bc2 = 1.0 / std::sqrt(bc2);
  }
  void operator()(float* w, float* s, const float* g, int64_t d) const {
    float* m = s;
    float* v = s + d;
    for (int64_t j = 0; j < d; ++j) {
      float gj = g[j];
      if (kDecoupled) {
        w[j] *= 1.f - lr * wd;
      } else {
        gj += wd * w[j];
      }
      m[j] = b1 * m[j] + (1.f - b1) * gj;
      v[j] = b2 * v[j] + (1.f - b2) * gj * gj;
      w[j] -= step_size * m[j] / (std::sqrt(v[j]) * inv_sqrt_bc2 + eps);
    }
  }
};

// FTRL-proximal (McMahan et al., 2013), per coordinate, with a general learning-rate power.
struct Ftrl {
  float alpha, beta, l1, l2, p;
  explicit Ftrl(const std::vector<double>& h) : alpha(h[0]), beta(h[1]), l1(h[2]), l2(h[3]), p(-h[4]) {}
  float root(float n) const { return p == 0.5f ? std::sqrt(n) : std::pow(n, p); }
  void operator()(float* w, float* s, const float* g, int64_t d) const {
    float* z = s;
    float* n = s + d;
    for (int64_t j = 0; j < d; ++j) {
      const float n_new = n[j] + g[j] * g[j];
      const float sigma = (root(n_new) - root(n[j])) / alpha;
      z[j] += g[j] - sigma * w[j];
      n[j] = n_new;
      if (std::fabs(z[j]) <= l1) {
        w[j] = 0.f;
      } else {
        const float sign = z[j] > 0.f ? 1.f : -1.f;
        w[j] = -(z[j] - sign * l1) / ((beta + root(n_new)) / alpha + l2);
      }
    }
  }
};

}  // namespace

void prefetch_for_update(const RowStore& store, uint32_t r) {
  const float* p = store.emb(r);
  for (int64_t j = 0; j < store.dim(); j += 16) __builtin_prefetch(p + j, 1);
  const float* s = store.slots(r);
  for (int64_t j = 0; j < store.slot_width(); j += 16) __builtin_prefetch(s + j, 1);
}

namespace {
void check_layout(OptimKind kind, const std::vector<double>& hyper, int64_t slot_width, int64_t dim) {
  const char* name = layout_of(kind).name;
  TORCH_CHECK_VALUE(hyper.size() == hyper_size_for(kind), "optimizer ", name, " takes ", hyper_size_for(kind),
                    " hyperparameters, got ", hyper.size());
  TORCH_CHECK_VALUE(slot_width == slot_width_for(kind, dim), "table slots (width ", slot_width,
                    ") do not match optimizer ", name, " (width ", slot_width_for(kind, dim), ")");
}
}  // namespace

RowRule make_row_rule(OptimKind kind, const std::vector<double>& hyper, int64_t slot_width, int64_t dim) {
  check_layout(kind, hyper, slot_width, dim);
  switch (kind) {
    case OptimKind::kSgd: return Sgd(hyper);
    case OptimKind::kAdagrad: return Adagrad(hyper);
    case OptimKind::kRowwiseAdagrad: return RowwiseAdagrad(hyper);
    case OptimKind::kAdam: return Adam<false>(hyper);
    case OptimKind::kAdamW: return Adam<true>(hyper);
    case OptimKind::kFtrl: return Ftrl(hyper);
  }
  TORCH_CHECK_VALUE(false, "unknown optimizer kind ", static_cast<int>(kind));
}

void apply_sparse_update(RowStore& store, OptimKind kind, const std::vector<double>& hyper, const int64_t* rows,
                         const float* grads, const uint8_t* finite, int64_t n) {
  const RowRule rule = make_row_rule(kind, hyper, store.slot_width(), store.dim());
  const int64_t d = store.dim();
  auto prefetch = [&](int64_t i) {
    if (rows[i] >= 0) prefetch_for_update(store, static_cast<uint32_t>(rows[i]));
  };
  constexpr int64_t kAhead = 8;
  at::parallel_for(0, n, 128, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < std::min(e, b + kAhead); ++i) prefetch(i);
    for (int64_t i = b; i < e; ++i) {
      if (i + kAhead < e) prefetch(i + kAhead);
      if (rows[i] < 0 || !finite[i]) continue;
      const uint32_t r = static_cast<uint32_t>(rows[i]);
      rule(store.emb(r), store.slots(r), grads + i * d, d);
    }
  });
}

}  // namespace recis

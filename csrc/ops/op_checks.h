// Input checks and the jagged-batch layout shared by the ops that take KeyedJaggedTensor batches.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "ops/pooling.h"

namespace recis {

inline void check_cpu(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), "recis: the table lives on cpu but ", what, " is on ", t.device(),
              "; move the input to the table's device");
}

inline void check_ids(const at::Tensor& t, const char* what) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, "recis: ", what, " must be int64 ids, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1, "recis: ", what, " must be 1-D, got shape ", t.sizes());
  check_cpu(t, what);
}

inline void check_offsets(const int64_t* off, int64_t num_bags, int64_t n_values) {
  TORCH_CHECK_VALUE(off[0] == 0, "recis: offsets must start at 0, got ", off[0]);
  for (int64_t k = 0; k < num_bags; ++k)
    TORCH_CHECK_VALUE(off[k] <= off[k + 1], "recis: offsets must be non-decreasing, but offsets[", k, "]=", off[k],
                      " > offsets[", k + 1, "]=", off[k + 1]);
  TORCH_CHECK_VALUE(off[num_bags] == n_values, "recis: the last offset (", off[num_bags],
                    ") must equal the number of values (", n_values, ")");
}

inline const float* optional_weights(const c10::optional<at::Tensor>& w, int64_t n) {
  if (!w.has_value() || !w->defined()) return nullptr;
  TORCH_CHECK_TYPE(w->scalar_type() == at::kFloat, "recis: per_sample_weights must be float32, got ", w->scalar_type());
  TORCH_CHECK_VALUE(w->dim() == 1 && w->size(0) == n, "recis: per_sample_weights must have shape [", n, "], got ",
                    w->sizes());
  check_cpu(*w, "per_sample_weights");
  TORCH_CHECK(w->is_contiguous(), "recis: per_sample_weights must be contiguous");
  return w->data_ptr<float>();
}

inline BagLayout make_layout(const at::Tensor& offsets, int64_t num_bags, int64_t batch, at::IntArrayRef feature_ns,
                             at::IntArrayRef col_offsets, int64_t out_cols, int64_t combiner, const float* weights) {
  return BagLayout{offsets.data_ptr<int64_t>(), num_bags, batch, feature_ns.data(), col_offsets.data(), out_cols,
                   static_cast<Combiner>(combiner), weights};
}

// Checks a (feature_ns, batch, col_offsets, offsets) layout; returns the number of bags.
inline int64_t check_layout(at::IntArrayRef feature_ns, int64_t batch, at::IntArrayRef col_offsets,
                            const at::Tensor& offsets) {
  const int64_t F = static_cast<int64_t>(feature_ns.size());
  TORCH_CHECK_VALUE(F >= 1 && batch >= 0, "recis: need at least one feature and a non-negative batch");
  TORCH_CHECK_VALUE(static_cast<int64_t>(col_offsets.size()) == F, "recis: col_offsets needs one entry per feature");
  TORCH_CHECK_VALUE(offsets.size(0) == F * batch + 1, "recis: offsets has ", offsets.size(0),
                    " entries; expected num_bags + 1 = ", F * batch + 1);
  return F * batch;
}

// One dedup segment per run of consecutive features of the same namespace ([seg_begin[2s],
// seg_begin[2s + 1]) of namespace seg_ns[s]); values of skipped features (ns < 0) get inverse -1.
inline void dedup_segments(const int64_t* off, at::IntArrayRef feature_ns, int64_t batch, int32_t* inv,
                           std::vector<int64_t>& seg_begin, std::vector<uint32_t>& seg_ns) {
  seg_begin.clear();
  seg_ns.clear();
  for (int64_t f = 0; f < static_cast<int64_t>(feature_ns.size()); ++f) {
    const int64_t s = off[f * batch], e = off[(f + 1) * batch];
    if (feature_ns[f] < 0) {
      std::fill(inv + s, inv + e, -1);
      continue;
    }
    if (!seg_ns.empty() && seg_ns.back() == feature_ns[f] && seg_begin.back() == s) {
      seg_begin.back() = e;  // extend the open segment
      continue;
    }
    seg_ns.push_back(static_cast<uint32_t>(feature_ns[f]));
    seg_begin.push_back(s);
    seg_begin.push_back(e);
  }
}

}  // namespace recis

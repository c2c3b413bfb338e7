#include "ops/row_pool_ops.h"

#include <vector>

#include "common/gil.h"
#include "ops/dedup.h"
#include "ops/op_checks.h"
#include "ops/pooling.h"

namespace recis {
namespace {

bool pools(int64_t combiner) {
  return combiner == static_cast<int64_t>(Combiner::kSum) || combiner == static_cast<int64_t>(Combiner::kMean);
}

void check_inverse(const at::Tensor& inverse, int64_t n_values, int64_t n_rows) {
  TORCH_CHECK_TYPE(inverse.scalar_type() == at::kInt, "recis: inverse must be int32, got ", inverse.scalar_type());
  TORCH_CHECK_VALUE(inverse.dim() == 1 && inverse.size(0) == n_values, "recis: inverse must have one entry per value (",
                    n_values, "), got shape ", inverse.sizes());
  check_cpu(inverse, "inverse");
  const int32_t* inv = inverse.data_ptr<int32_t>();
  for (int64_t i = 0; i < n_values; ++i)
    TORCH_CHECK_VALUE(inv[i] >= -1 && inv[i] < n_rows, "recis: inverse[", i, "]=", inv[i], " is outside [-1, ",
                      n_rows, ")");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dedup_jagged(const at::Tensor& values_in,
                                                                        const at::Tensor& offsets_in,
                                                                        at::IntArrayRef feature_ns, int64_t batch) {
  check_ids(values_in, "values");
  check_ids(offsets_in, "offsets");
  std::vector<int64_t> zeros(feature_ns.size(), 0);
  const int64_t num_bags = check_layout(feature_ns, batch, zeros, offsets_in);
  const at::Tensor values = values_in.contiguous(), offsets = offsets_in.contiguous();
  const int64_t n = values.size(0);
  TORCH_CHECK_VALUE(n < (int64_t(1) << 31), "recis: at most 2^31 - 1 values per call");
  at::Tensor inverse = at::empty({n}, at::TensorOptions().dtype(at::kInt));
  DedupResult uniq;
  {
    GilRelease nogil;
    const int64_t* off = offsets.data_ptr<int64_t>();
    check_offsets(off, num_bags, n);
    std::vector<int64_t> seg_begin;
    std::vector<uint32_t> seg_ns;
    dedup_segments(off, feature_ns, batch, inverse.data_ptr<int32_t>(), seg_begin, seg_ns);
    dedup_keys(values.data_ptr<int64_t>(), seg_begin.data(), seg_ns.data(), static_cast<int64_t>(seg_ns.size()),
               inverse.data_ptr<int32_t>(), uniq);
  }
  const int64_t U = uniq.size();
  const auto opts = at::TensorOptions().dtype(at::kLong);
  at::Tensor ids = at::empty({U}, opts), ns = at::empty({U}, opts), counts = at::empty({U}, opts);
  int64_t *pi = ids.data_ptr<int64_t>(), *pn = ns.data_ptr<int64_t>(), *pc = counts.data_ptr<int64_t>();
  for (int64_t u = 0; u < U; ++u) {
    pi[u] = uniq.ids[u];
    pn[u] = uniq.ns[u];
    pc[u] = uniq.counts[u];
  }
  return {ids, ns, counts, inverse};
}

at::Tensor pool_rows(const at::Tensor& rows_in, const at::Tensor& inverse_in, const at::Tensor& offsets_in,
                     const c10::optional<at::Tensor>& weights, at::IntArrayRef feature_ns, int64_t batch,
                     at::IntArrayRef col_offsets, int64_t out_cols, int64_t combiner) {
  TORCH_CHECK_TYPE(rows_in.scalar_type() == at::kFloat, "recis: rows must be float32, got ", rows_in.scalar_type());
  TORCH_CHECK_VALUE(rows_in.dim() == 2, "recis: rows must be [n, dim], got shape ", rows_in.sizes());
  TORCH_CHECK_VALUE(pools(combiner), "recis: pool_rows pools (sum or mean), got combiner ", combiner);
  check_cpu(rows_in, "rows");
  check_ids(offsets_in, "offsets");
  const int64_t num_bags = check_layout(feature_ns, batch, col_offsets, offsets_in);
  const at::Tensor rows = rows_in.contiguous(), inverse = inverse_in.contiguous(), offsets = offsets_in.contiguous();
  const int64_t n = inverse.numel(), dim = rows.size(1), n_rows = rows.size(0);
  check_offsets(offsets.data_ptr<int64_t>(), num_bags, n);
  check_inverse(inverse, n, n_rows);
  const float* w = optional_weights(weights, n);
  at::Tensor out = at::empty({batch, out_cols}, rows.options());
  {
    GilRelease nogil;
    std::vector<const float*> ptrs(n_rows);
    const float* base = rows.data_ptr<float>();
    for (int64_t u = 0; u < n_rows; ++u) ptrs[u] = base + u * dim;
    const BagLayout L = make_layout(offsets, num_bags, batch, feature_ns, col_offsets, out_cols, combiner, w);
    pooled_forward(L, ptrs.data(), inverse.data_ptr<int32_t>(), dim, out.data_ptr<float>());
  }
  return out;
}

at::Tensor pool_rows_backward(const at::Tensor& grad_in, const at::Tensor& inverse_in, const at::Tensor& offsets_in,
                              const c10::optional<at::Tensor>& weights, at::IntArrayRef feature_ns, int64_t batch,
                              at::IntArrayRef col_offsets, int64_t out_cols, int64_t combiner, int64_t n_rows,
                              int64_t dim) {
  TORCH_CHECK_TYPE(grad_in.scalar_type() == at::kFloat, "recis: output gradient must be float32, got ",
                   grad_in.scalar_type());
  TORCH_CHECK_VALUE(grad_in.dim() == 2 && grad_in.size(0) == batch && grad_in.size(1) == out_cols,
                    "recis: output gradient must be [", batch, ", ", out_cols, "], got ", grad_in.sizes());
  TORCH_CHECK_VALUE(pools(combiner), "recis: pool_rows pools (sum or mean), got combiner ", combiner);
  TORCH_CHECK_VALUE(n_rows >= 0 && dim >= 1, "recis: need n_rows >= 0 and dim >= 1, got ", n_rows, " and ", dim);
  check_cpu(grad_in, "the output gradient");
  const int64_t num_bags = check_layout(feature_ns, batch, col_offsets, offsets_in);
  const at::Tensor grad = grad_in.contiguous(), inverse = inverse_in.contiguous(), offsets = offsets_in.contiguous();
  const int64_t n = inverse.numel();
  check_offsets(offsets.data_ptr<int64_t>(), num_bags, n);
  check_inverse(inverse, n, n_rows);
  const float* w = optional_weights(weights, n);
  at::Tensor grads = at::empty({n_rows, dim}, grad.options());
  {
    GilRelease nogil;
    std::vector<uint8_t> finite(n_rows);  // non-finite sums flow on; the owner's optimizer handles them
    const BagLayout L = make_layout(offsets, num_bags, batch, feature_ns, col_offsets, out_cols, combiner, w);
    unique_row_grads(L, grad.data_ptr<float>(), inverse.data_ptr<int32_t>(), n, n_rows, dim, grads.data_ptr<float>(),
                     finite.data());
  }
  return grads;
}

}  // namespace recis

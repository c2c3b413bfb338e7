// Jagged-batch ops on plain row tensors (no table): the dedup and the pooling that a sharded
// lookup runs around its exchange of rows. Schemas are declared in bind.cpp.
#pragma once
#include <ATen/ATen.h>

#include <tuple>

namespace recis {

// Unique (namespace, id) keys of the features with feature_ns >= 0: (ids, ns, counts) int64
// and the int32 inverse of every value (-1 for skipped features).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dedup_jagged(const at::Tensor& values,
                                                                        const at::Tensor& offsets,
                                                                        at::IntArrayRef feature_ns, int64_t batch);
// [batch, out_cols] bags pooled from rows[inverse[i]] (as lookup_forward pools table rows).
at::Tensor pool_rows(const at::Tensor& rows, const at::Tensor& inverse, const at::Tensor& offsets,
                     const c10::optional<at::Tensor>& weights, at::IntArrayRef feature_ns, int64_t batch,
                     at::IntArrayRef col_offsets, int64_t out_cols, int64_t combiner);
// The gradient of pool_rows with respect to rows ([n_rows, dim], per-unique-row sums).
at::Tensor pool_rows_backward(const at::Tensor& grad_out, const at::Tensor& inverse, const at::Tensor& offsets,
                              const c10::optional<at::Tensor>& weights, at::IntArrayRef feature_ns, int64_t batch,
                              at::IntArrayRef col_offsets, int64_t out_cols, int64_t combiner, int64_t n_rows,
                              int64_t dim);

}  // namespace recis

// The table's torch ops (CPU kernels). Schemas are declared in bind.cpp.
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <tuple>
#include <utility>

#include "hashtable/hash_table.h"

namespace recis {

// lookup_forward's `mode`: eval (no inserts, no step), train, train keeping the forward's rows for backward.
enum class LookupMode : int32_t { kEval = 0, kTrain = 1, kTrainWithGrad = 2 };
inline constexpr std::pair<const char*, LookupMode> kLookupModeNames[] = {  // recis.vocabulary.LOOKUP_MODES
    {"eval", LookupMode::kEval}, {"train", LookupMode::kTrain}, {"train_with_grad", LookupMode::kTrainWithGrad}};
// Counts a table-changing op on the token (the op's ordering edge for torch.compile).
void bump(at::Tensor& token);
// The unique_rows output of a training forward that expects a backward: its storage carries
// the forward's lease on the table (HashTable::add_forward) until autograd frees it.
at::Tensor leased(const std::shared_ptr<HashTable>& table, const at::Tensor& rows, uint32_t step);

std::tuple<at::Tensor, at::Tensor, at::Tensor> lookup_forward(at::Tensor& token, int64_t handle, const at::Tensor& values,
                                                              const at::Tensor& offsets,
                                                              const c10::optional<at::Tensor>& weights,
                                                              at::IntArrayRef feature_ns, int64_t batch,
                                                              at::IntArrayRef col_offsets, int64_t out_cols,
                                                              int64_t combiner, int64_t mode);
void lookup_backward(at::Tensor& token, int64_t handle, const at::Tensor& grad_out, const at::Tensor& offsets,
                     const c10::optional<at::Tensor>& weights, const at::Tensor& unique_rows, const at::Tensor& inverse,
                     at::IntArrayRef feature_ns, int64_t batch, at::IntArrayRef col_offsets, int64_t combiner);
// Backward and optimizer update in one pass (fused mode): no pending gradients.
at::Tensor lookup_backward_apply(at::Tensor& token, int64_t handle, const at::Tensor& grad_out,
                                 const at::Tensor& offsets, const c10::optional<at::Tensor>& weights,
                                 const at::Tensor& unique_rows, const at::Tensor& inverse, at::IntArrayRef feature_ns,
                                 int64_t batch, at::IntArrayRef col_offsets, int64_t combiner, int64_t kind,
                                 at::ArrayRef<double> hyper);
at::Tensor apply_update(at::Tensor& token, int64_t handle, int64_t kind, at::ArrayRef<double> hyper,
                        bool skip_nonfinite);
void clear_pending(at::Tensor& token, int64_t handle);
at::Tensor find(int64_t handle, int64_t ns, const at::Tensor& ids);
at::Tensor find_or_insert(at::Tensor& token, int64_t handle, int64_t ns, const at::Tensor& ids);
c10::SymInt erase(at::Tensor& token, int64_t handle, int64_t ns, const at::Tensor& ids);
at::Tensor gather(int64_t handle, const at::Tensor& rows);

}  // namespace recis

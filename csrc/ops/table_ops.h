// The table's torch ops (CPU kernels). Schemas are declared in bind.cpp.
//
// The lookup ops take a list of tables (one op call per EmbeddingCollection step; a single
// table is a list of one). Table t reads the features whose feature_ns[t * F + f] >= 0 (F = the
// number of features of the batch), lays them out by col_offsets[t * F + f] and pools by
// combiners[t]. The output holds the pooled tables' [batch, out_cols] block (their columns side by
// side), then each unpooled table's [n, dim] block, in table order: flat, or shaped [batch, out_cols]
// when every table is pooled and [n, dim] for a single unpooled table (out_cols 0). The backward
// ops take its gradient in any shape with that many elements.
// unique_rows [T, n] and inverse [T, n] hold each table's unique rows and inverse index.
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <tuple>
#include <utility>
#include <vector>

#include "hashtable/hash_table.h"

namespace recis {

// lookup_forward's `mode`: eval (no inserts, no step), train, train keeping the forward's rows for backward.
enum class LookupMode : int32_t { kEval = 0, kTrain = 1, kTrainWithGrad = 2 };
inline constexpr std::pair<const char*, LookupMode> kLookupModeNames[] = {  // recis.vocabulary.LOOKUP_MODES
    {"eval", LookupMode::kEval}, {"train", LookupMode::kTrain}, {"train_with_grad", LookupMode::kTrainWithGrad}};
// Counts a table-changing op on the token (the op's ordering edge for torch.compile).
void bump(const at::Tensor& token);
// The unique_rows output of a training forward that expects a backward: its storage carries
// the forward's lease on each table (HashTable::add_forward, at steps[t]) until autograd frees it.
at::Tensor leased(const std::vector<std::shared_ptr<HashTable>>& tables, const at::Tensor& rows,
                  const std::vector<uint32_t>& steps);
inline at::Tensor leased(const std::shared_ptr<HashTable>& table, const at::Tensor& rows, uint32_t step) {
  return leased(std::vector<std::shared_ptr<HashTable>>{table}, rows, std::vector<uint32_t>{step});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lookup_forward(at::TensorList tokens, at::IntArrayRef tables,
                                                              const at::Tensor& values, const at::Tensor& offsets,
                                                              const c10::optional<at::Tensor>& weights,
                                                              at::IntArrayRef feature_ns, int64_t batch,
                                                              at::IntArrayRef col_offsets, int64_t out_cols,
                                                              at::IntArrayRef combiners, int64_t mode);
void lookup_backward(at::TensorList tokens, at::IntArrayRef tables, const at::Tensor& grad_out,
                     const at::Tensor& offsets, const c10::optional<at::Tensor>& weights,
                     const at::Tensor& unique_rows, const at::Tensor& inverse, at::IntArrayRef feature_ns,
                     int64_t batch, at::IntArrayRef col_offsets, int64_t out_cols, at::IntArrayRef combiners);
// Backward and optimizer update in one pass (fused mode): no pending gradients. Table t uses
// optimizer kinds[t] with the next hyper_size_for(kinds[t]) entries of hyper. Returns [T, 2]:
// per table the rows updated and the rows left alone for a NaN/Inf gradient.
at::Tensor lookup_backward_apply(at::TensorList tokens, at::IntArrayRef tables, const at::Tensor& grad_out,
                                 const at::Tensor& offsets, const c10::optional<at::Tensor>& weights,
                                 const at::Tensor& unique_rows, const at::Tensor& inverse, at::IntArrayRef feature_ns,
                                 int64_t batch, at::IntArrayRef col_offsets, int64_t out_cols,
                                 at::IntArrayRef combiners, at::IntArrayRef kinds, at::ArrayRef<double> hyper);
at::Tensor apply_update(at::Tensor& token, int64_t handle, int64_t kind, at::ArrayRef<double> hyper,
                        bool skip_nonfinite);
void clear_pending(at::TensorList tokens, at::IntArrayRef tables);
at::Tensor find(int64_t handle, int64_t ns, const at::Tensor& ids);
at::Tensor find_or_insert(at::Tensor& token, int64_t handle, int64_t ns, const at::Tensor& ids);
c10::SymInt erase(at::Tensor& token, int64_t handle, int64_t ns, const at::Tensor& ids);
at::Tensor gather(int64_t handle, const at::Tensor& rows);

}  // namespace recis

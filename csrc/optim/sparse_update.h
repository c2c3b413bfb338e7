// Fused in-place optimizer updates of table rows and their slots.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "hashtable/row_store.h"

namespace recis {

// The slot layout and hyperparameters of each kind (hyper is read in this order):
//   kSgd             slots 0        hyper [lr, weight_decay]
//   kAdagrad         slots dim      hyper [lr, lr_decay, weight_decay, eps, step]
//   kRowwiseAdagrad  slots 1        hyper [lr, weight_decay, eps]
//   kAdam            slots 2*dim    hyper [lr, beta1, beta2, eps, weight_decay, step]
//   kAdamW           slots 2*dim    hyper [lr, beta1, beta2, eps, weight_decay, step]
//   kFtrl            slots 2*dim    hyper [alpha, beta, l1, l2, lr_power]
enum class OptimKind : int32_t { kSgd = 0, kAdagrad = 1, kRowwiseAdagrad = 2, kAdam = 3, kAdamW = 4, kFtrl = 5 };

int64_t slot_width_for(OptimKind kind, int64_t dim);
size_t hyper_size_for(OptimKind kind);

// Rows are read-modify-write at random: prefetch one whole, for writing, a few rows ahead.
void prefetch_for_update(const RowStore& store, uint32_t r);

// Updates one row in place: (embedding, slots, gradient, dim).
using RowRule = std::function<void(float*, float*, const float*, int64_t)>;
RowRule make_row_rule(OptimKind kind, const std::vector<double>& hyper, int64_t slot_width, int64_t dim);

// Applies grads[i] to row rows[i] for every i with rows[i] >= 0 and finite[i] != 0.
// Rows must be distinct. Parallel over rows.
void apply_sparse_update(RowStore& store, OptimKind kind, const std::vector<double>& hyper, const int64_t* rows,
                         const float* grads, const uint8_t* finite, int64_t n);

}  // namespace recis

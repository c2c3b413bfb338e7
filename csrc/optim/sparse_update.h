// Fused in-place optimizer updates of table rows and their slots.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <vector>

#include "hashtable/row_store.h"

namespace recis {

enum class OptimKind : int32_t { kSgd = 0, kAdagrad = 1, kRowwiseAdagrad = 2, kAdam = 3, kAdamW = 4, kFtrl = 5 };

// Each kind's layout, indexed by its code: a row holds slots_per_dim * dim + slots_per_row slot
// floats, and the kernels read `hyper` in this order (recis.vocabulary.OPTIMIZERS checks it).
struct OptimLayout {
  const char* name;
  int64_t slots_per_dim, slots_per_row;
  std::array<const char*, 6> hyper;  // unused entries are null
};
inline constexpr OptimLayout kOptimLayouts[] = {
    {"sgd", 0, 0, {"lr", "weight_decay"}},
    {"adagrad", 1, 0, {"lr", "lr_decay", "weight_decay", "eps", "step"}},
    {"rowwise_adagrad", 0, 1, {"lr", "weight_decay", "eps"}},
    {"adam", 2, 0, {"lr", "beta1", "beta2", "eps", "weight_decay", "step"}},
    {"adamw", 2, 0, {"lr", "beta1", "beta2", "eps", "weight_decay", "step"}},
    {"ftrl", 2, 0, {"lr", "beta", "l1", "l2", "lr_power"}},
};

// Row-wise Adagrad sums a row's squared gradient in this many lanes (recis.vocabulary.REDUCTION_LANES).
inline constexpr int64_t kRowwiseAdagradLanes = 16;

const OptimLayout& layout_of(OptimKind kind);  // a ValueError for an unknown kind
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

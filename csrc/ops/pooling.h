// Pooled forward over jagged bags, and the per-unique-row gradient of the backward.
#pragma once
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

namespace recis {

enum class Combiner : int32_t { kSum = 0, kMean = 1, kNone = 2 };
inline constexpr std::pair<const char*, Combiner> kCombinerNames[] = {
    {"sum", Combiner::kSum}, {"mean", Combiner::kMean}, {"none", Combiner::kNone}};  // recis.vocabulary.COMBINERS

// Where bag k = f * batch + b of a KeyedJaggedTensor-ordered batch lands in the output:
// row b, columns [col_offsets[f], col_offsets[f] + dim) of a [batch, out_cols] matrix.
struct BagLayout {
  const int64_t* offsets;  // [num_bags + 1]
  int64_t num_bags;
  int64_t batch;
  const int64_t* feature_ns;   // [num_bags / batch]; < 0 marks a feature this call skips
  const int64_t* col_offsets;  // [num_bags / batch]
  int64_t out_cols;
  Combiner combiner;
  const float* weights;  // per value, or nullptr
};

// out[bag] = combine(weight_i * rows[inverse[i]]) for the values i of each bag; empty bags give 0.
// For Combiner::kNone, out is [n, dim] with out[i] = weight_i * rows[inverse[i]]. Bags and
// values of skipped features are neither read nor written.
void pooled_forward(const BagLayout& L, const float* const* rows, const int32_t* inverse, int64_t dim, float* out);

// grads[u] = sum over values i with inverse[i] == u of scale_i * grad_out[bag of i];
// finite[u] = whether grads[u] is free of NaN/Inf. Summation order is the value order, so
// the result does not depend on the thread count.
void unique_row_grads(const BagLayout& L, const float* grad_out, const int32_t* inverse, int64_t n_values,
                      int64_t n_unique, int64_t dim, float* grads, uint8_t* finite);

// Calls sink(u, g, finite) once per unique row u, in parallel, with g its summed gradient in
// a per-thread buffer (valid only during the call), and prefetch(u) a few rows ahead.
using GradSink = std::function<void(int64_t u, const float* g, bool finite)>;
void for_each_unique_grad(const BagLayout& L, const float* grad_out, const int32_t* inverse, int64_t n_values,
                          int64_t n_unique, int64_t dim, const GradSink& sink,
                          const std::function<void(int64_t)>& prefetch);

}  // namespace recis

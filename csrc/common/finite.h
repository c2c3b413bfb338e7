// Finiteness of a float vector, vectorizable (no branch per element).
#pragma once
#include <cstdint>

#include "common/lane_sum.h"

namespace recis {

// True iff no element is NaN or +-Inf: Inf * 0 and NaN * 0 are NaN, and NaN poisons a sum (in
// any order: the lanes only make it vectorize).
inline bool all_finite(const float* g, int64_t n) {
  const float probe = lane_sum<16>(n, [g](int64_t j) { return g[j] * 0.f; });
  return probe == probe;
}

}  // namespace recis

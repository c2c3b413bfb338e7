// Finiteness of a float vector, vectorizable (no branch per element).
#pragma once
#include <cstdint>

namespace recis {

// True iff no element is NaN or +-Inf: Inf * 0 and NaN * 0 are NaN, and NaN poisons the sum.
inline bool all_finite(const float* g, int64_t n) {
  float probe = 0.f;
  for (int64_t j = 0; j < n; ++j) probe += g[j] * 0.f;
  return probe == probe;
}

}  // namespace recis

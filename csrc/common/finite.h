// Finiteness of a float vector, vectorizable (no branch per element).
#pragma once
#include <cstdint>

namespace recis {

// True iff no element is NaN or +-Inf: Inf * 0 and NaN * 0 are NaN, and NaN poisons a sum. The
// sum runs in 16 independent lanes, so that it vectorizes without reassociating float math
// (the answer does not depend on the order anyway).
inline bool all_finite(const float* g, int64_t n) {
  constexpr int64_t kLanes = 16;
  float lane[kLanes] = {0.f};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lane[l] += g[j + l] * 0.f;
  for (; j < n; ++j) lane[0] += g[j] * 0.f;
  float probe = 0.f;
  for (int64_t l = 0; l < kLanes; ++l) probe += lane[l];
  return probe == probe;
}

}  // namespace recis

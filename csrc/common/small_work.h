// Small inputs run an op's loops on the calling thread: forking an OpenMP team then costs more
// than the work, and takes the cores from the data loader's thread.
#pragma once
#include <algorithm>
#include <cstdint>

namespace recis {

// Below this many values an op runs serially (a batch of 256 examples x 8 features is ~2k).
constexpr int64_t kSerialBelowValues = 16384;

// The at::parallel_for grain for `items` work items of an op over `n_values` values: all the
// items in one serial chunk when the op is small, else `grain`.
inline int64_t grain_for(int64_t n_values, int64_t items, int64_t grain) {
  return n_values < kSerialBelowValues ? std::max<int64_t>(items, 1) : grain;
}

}  // namespace recis

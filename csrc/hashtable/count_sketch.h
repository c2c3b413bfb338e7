// Bounded count-min sketch with conservative update, for frequency admission.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/hashing.h"

namespace recis {

class CountSketch {
 public:
  CountSketch() = default;
  CountSketch(uint64_t width, int depth) : width_(width), depth_(depth), counts_(width * depth, 0) {}

  bool enabled() const { return width_ != 0; }
  // Estimated count after adding `c` sightings; never below the true count.
  uint32_t peek_add(int64_t id, uint32_t ns, uint32_t c) const {
    uint64_t idx[kMaxDepth];
    return add_impl(id, ns, c, idx, false);
  }
  uint32_t add(int64_t id, uint32_t ns, uint32_t c) {
    uint64_t idx[kMaxDepth];
    return add_impl(id, ns, c, idx, true);
  }
  std::vector<uint32_t>& counts() { return counts_; }
  size_t memory_bytes() const { return counts_.capacity() * sizeof(uint32_t); }

  static constexpr int kMaxDepth = 8;

 private:
  uint32_t add_impl(int64_t id, uint32_t ns, uint32_t c, uint64_t* idx, bool commit) const {
    uint64_t h = hash_id(id, ns);
    uint32_t est = UINT32_MAX;
    for (int d = 0; d < depth_; ++d) {
      h = mix64(h + kGolden);
      idx[d] = static_cast<uint64_t>(d) * width_ + reduce_range(h, width_);
      est = std::min(est, counts_[idx[d]]);
    }
    const uint64_t target64 = static_cast<uint64_t>(est) + c;
    const uint32_t target = target64 > UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(target64);
    if (commit) {
      // Conservative update: raise each counter only as far as the new estimate.
      auto& cs = const_cast<std::vector<uint32_t>&>(counts_);
      for (int d = 0; d < depth_; ++d) cs[idx[d]] = std::max(cs[idx[d]], target);
    }
    return target;
  }

  uint64_t width_ = 0;
  int depth_ = 0;
  std::vector<uint32_t> counts_;
};

}  // namespace recis

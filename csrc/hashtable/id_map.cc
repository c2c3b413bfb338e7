#include "hashtable/id_map.h"

#include <algorithm>
#include <cmath>

#include <ATen/Parallel.h>

namespace recis {

void IdMap::place_absent_concurrent(int64_t id, uint32_t row, uint32_t stamp) {
  for (uint64_t i = home(id);; i = next(i)) {
    uint32_t* row1 = &slots_[i].row1;
    uint32_t empty = 0;
    if (__atomic_load_n(row1, __ATOMIC_RELAXED) == 0 &&
        __atomic_compare_exchange_n(row1, &empty, row + 1, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
      // Concurrent inserters look only at row1; readers wait for the parallel region's join.
      slots_[i].id = id;
      slots_[i].stamp = stamp;
      return;
    }
  }
}

void IdMap::rehash(uint64_t new_cap) {
  std::vector<Slot> old;
  old.swap(slots_);
  slots_.assign(new_cap, Slot{0, 0, 0});
  cap_ = new_cap;
  const int64_t n = static_cast<int64_t>(old.size());
  at::parallel_for(0, n, 1 << 15, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      if (i + kAhead < e && old[i + kAhead].row1) __builtin_prefetch(&slots_[home(old[i + kAhead].id)], 1);
      if (old[i].row1) place_absent_concurrent(old[i].id, old[i].row1 - 1, old[i].stamp);
    }
  });
}

void IdMap::find_batch(const int64_t* ids, int64_t n, int64_t* rows) const {
  at::parallel_for(0, n, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < std::min(e, b + kAhead); ++i) prefetch(ids[i]);
    for (int64_t i = b; i < e; ++i) {
      if (i + kAhead < e) prefetch(ids[i + kAhead]);
      rows[i] = find(ids[i]);
    }
  });
}

void IdMap::reserve(uint64_t n) {
  if (static_cast<double>(n) <= kMaxLoad * static_cast<double>(cap_)) return;
  const uint64_t want = static_cast<uint64_t>(std::ceil(static_cast<double>(n) / kGrowLoad));
  rehash(std::max<uint64_t>(want, 16));
}

int64_t IdMap::erase(int64_t id) {
  if (cap_ == 0) return kMissing;
  uint64_t i = home(id);
  for (;; i = next(i)) {
    if (slots_[i].row1 == 0) return kMissing;
    if (slots_[i].id == id) break;
  }
  const int64_t row = static_cast<int64_t>(slots_[i].row1) - 1;
  // Backward-shift: pull later members of the probe run into the hole when their home
  // slot does not lie cyclically in (hole, j].
  for (uint64_t j = next(i);; j = next(j)) {
    if (slots_[j].row1 == 0) break;
    const uint64_t k = home(slots_[j].id);
    const bool stays = (i <= j) ? (i < k && k <= j) : (i < k || k <= j);
    if (stays) continue;
    slots_[i] = slots_[j];
    i = j;
  }
  slots_[i] = Slot{0, 0, 0};
  --size_;
  return row;
}

void IdMap::clear() {
  std::vector<Slot>().swap(slots_);
  cap_ = size_ = 0;
}

}  // namespace recis

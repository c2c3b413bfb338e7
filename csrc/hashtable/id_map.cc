#include "hashtable/id_map.h"

#include <algorithm>
#include <cmath>

namespace recis {

void IdMap::place(uint64_t h, uint32_t row) {
  uint64_t i = reduce_range(h, cap_);
  while (slots_[i].row1 != 0) i = next(i);
  slots_[i] = Slot{static_cast<uint32_t>(h), row + 1};
}

void IdMap::rehash(uint64_t new_cap) {
  std::vector<Slot> old;
  old.swap(slots_);
  slots_.assign(new_cap, Slot{0, 0});
  cap_ = new_cap;
  for (const Slot& s : old)
    if (s.row1) place(hash_id(store_->meta(s.row1 - 1)->id, ns_), s.row1 - 1);
}

void IdMap::reserve(uint64_t n) {
  if (static_cast<double>(n) <= kMaxLoad * static_cast<double>(cap_)) return;
  const uint64_t want = static_cast<uint64_t>(std::ceil(static_cast<double>(n) / kGrowLoad));
  rehash(std::max<uint64_t>(want, 16));
}

void IdMap::insert_absent(int64_t id, uint32_t row) {
  reserve(size_ + 1);
  place(hash_id(id, ns_), row);
  ++size_;
}

int64_t IdMap::erase(int64_t id) {
  if (cap_ == 0) return kMissing;
  const uint64_t h = hash_id(id, ns_);
  const uint32_t fp = static_cast<uint32_t>(h);
  uint64_t i = reduce_range(h, cap_);
  for (;; i = next(i)) {
    const Slot s = slots_[i];
    if (s.row1 == 0) return kMissing;
    if (s.fp == fp && store_->meta(s.row1 - 1)->id == id) break;
  }
  const int64_t row = slots_[i].row1 - 1;
  // Backward-shift: pull later members of the probe run into the hole when their home
  // slot does not lie cyclically in (hole, j].
  for (uint64_t j = next(i);; j = next(j)) {
    if (slots_[j].row1 == 0) break;
    const uint64_t k = home_of_row(slots_[j].row1 - 1);
    const bool stays = (i <= j) ? (i < k && k <= j) : (i < k || k <= j);
    if (stays) continue;
    slots_[i] = slots_[j];
    i = j;
  }
  slots_[i] = Slot{0, 0};
  --size_;
  return row;
}

void IdMap::clear() {
  std::vector<Slot>().swap(slots_);
  cap_ = size_ = 0;
}

}  // namespace recis

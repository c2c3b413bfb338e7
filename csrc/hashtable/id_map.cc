#include "hashtable/id_map.h"

#include <algorithm>
#include <cmath>

namespace recis {

void IdMap::place(int64_t id, uint32_t row) {
  uint64_t i = home(id);
  while (slots_[i].row1 != 0) i = next(i);
  slots_[i] = Slot{id, row + 1, 0};
}

void IdMap::rehash(uint64_t new_cap) {
  std::vector<Slot> old;
  old.swap(slots_);
  slots_.assign(new_cap, Slot{0, 0, 0});
  cap_ = new_cap;
  for (const Slot& s : old)
    if (s.row1) place(s.id, s.row1 - 1);
}

void IdMap::reserve(uint64_t n) {
  if (static_cast<double>(n) <= kMaxLoad * static_cast<double>(cap_)) return;
  const uint64_t want = static_cast<uint64_t>(std::ceil(static_cast<double>(n) / kGrowLoad));
  rehash(std::max<uint64_t>(want, 16));
}

void IdMap::insert_absent(int64_t id, uint32_t row) {
  reserve(size_ + 1);
  place(id, row);
  ++size_;
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

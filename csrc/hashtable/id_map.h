// Open-addressing id -> row map over full 64-bit ids.
#pragma once
#include <cstdint>
#include <vector>

#include "common/hashing.h"
#include "hashtable/row_store.h"

namespace recis {

// Linear probing over 8-byte slots {fingerprint, row + 1}. Emptiness is encoded in the row
// field (0 = empty), never in the key, so every int64 value, including 0, -1, INT64_MIN and
// INT64_MAX, is a valid id. The full id is kept in the row's metadata and compared on a
// fingerprint match, so two ids never share a row. Erase uses backward-shift deletion (no
// tombstones). The map grows by rehash once its load passes `kMaxLoad`.
class IdMap {
 public:
  static constexpr int64_t kMissing = -1;
  static constexpr double kMaxLoad = 0.8;
  static constexpr double kGrowLoad = 0.6;

  IdMap(const RowStore* store, uint32_t ns) : store_(store), ns_(ns) {}

  int64_t find(int64_t id) const {
    if (cap_ == 0) return kMissing;
    const uint64_t h = hash_id(id, ns_);
    const uint32_t fp = static_cast<uint32_t>(h);
    for (uint64_t i = reduce_range(h, cap_);; i = next(i)) {
      const Slot s = slots_[i];
      if (s.row1 == 0) return kMissing;
      if (s.fp == fp && store_->meta(s.row1 - 1)->id == id) return s.row1 - 1;
    }
  }
  // Prefetches the home slot of `id` (used a few ids ahead in batched finds).
  void prefetch(int64_t id) const {
    if (cap_) __builtin_prefetch(&slots_[reduce_range(hash_id(id, ns_), cap_)]);
  }

  // Inserts an id known to be absent; the row's metadata must already hold the id.
  void insert_absent(int64_t id, uint32_t row);
  // Removes `id`; returns its row or kMissing.
  int64_t erase(int64_t id);
  // Makes room for `n` live ids without a rehash on the way.
  void reserve(uint64_t n);
  void clear();

  uint64_t size() const { return size_; }
  uint64_t capacity() const { return cap_; }
  size_t memory_bytes() const { return slots_.capacity() * sizeof(Slot); }

  // Calls f(row) for every live row, in slot order.
  template <class F>
  void for_each_row(F&& f) const {
    for (const Slot& s : slots_)
      if (s.row1) f(s.row1 - 1);
  }

 private:
  struct Slot {
    uint32_t fp;
    uint32_t row1;  // row + 1; 0 marks an empty slot
  };
  uint64_t next(uint64_t i) const { return i + 1 == cap_ ? 0 : i + 1; }
  uint64_t home_of_row(uint32_t row) const { return reduce_range(hash_id(store_->meta(row)->id, ns_), cap_); }
  void place(uint64_t h, uint32_t row);
  void rehash(uint64_t new_cap);

  const RowStore* store_;
  uint32_t ns_;
  std::vector<Slot> slots_;
  uint64_t cap_ = 0, size_ = 0;
};

}  // namespace recis

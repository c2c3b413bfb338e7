// Open-addressing id -> row map over full 64-bit ids.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/hashing.h"

namespace recis {

// Linear probing over 16-byte slots {id, row + 1, stamp}. Emptiness is encoded in the row field
// (0 = empty), never in the key, so every int64 value, including 0, -1, INT64_MIN and
// INT64_MAX, is a valid id, and two ids never share a row. A find reads one slot run (one
// cache miss for a hit). Erase uses backward-shift deletion (no tombstones). The map grows
// by rehash once its load passes kMaxLoad, to load kGrowLoad.
class IdMap {
 public:
  static constexpr int64_t kMissing = -1;
  static constexpr double kMaxLoad = 0.8;
  static constexpr double kGrowLoad = 0.67;
  // How many ids ahead batched probes prefetch their home slot (enough misses in flight to
  // cover DRAM latency with two threads).
  static constexpr int64_t kAhead = 16;

  explicit IdMap(uint32_t ns) : ns_(ns) {}

  int64_t find(int64_t id) const {
    if (cap_ == 0) return kMissing;
    for (uint64_t i = home(id);; i = next(i)) {
      const Slot& s = slots_[i];
      if (s.id == id && s.row1 != 0) return static_cast<int64_t>(s.row1) - 1;
      if (s.row1 == 0) return kMissing;
    }
  }
  // The hash that places `id` (hash_id of the id in this map's namespace): a caller that
  // already has it probes with find_slot_h / prefetch_h and hashes each id once.
  uint64_t hash(int64_t id) const { return hash_id(id, ns_); }
  struct Slot;
  // The live slot of `id` (whose hash is h), or nullptr; the pointer stays valid until the map
  // changes (insert, erase, rehash).
  Slot* find_slot_h(int64_t id, uint64_t h) {
    if (cap_ == 0) return nullptr;
    for (uint64_t i = reduce_range(h, cap_);; i = next(i)) {
      Slot& s = slots_[i];
      if (s.row1 == 0) return nullptr;
      if (s.id == id) return &s;
    }
  }
  void prefetch_h(uint64_t h) const {
    if (!cap_) return;
    const char* p = reinterpret_cast<const char*>(&slots_[reduce_range(h, cap_)]);
    __builtin_prefetch(p);
    __builtin_prefetch(p + 64);
  }
  // The live slot of `id`, or nullptr (hashes the id).
  Slot* find_slot(int64_t id) { return find_slot_h(id, hash(id)); }
  // Prefetches the home slot of `id` and the next cache line, where its probe run often
  // continues (used kAhead ids ahead in batched probes).
  void prefetch(int64_t id) const {
    if (!cap_) return;
    const char* p = reinterpret_cast<const char*>(&slots_[home(id)]);
    __builtin_prefetch(p);
    __builtin_prefetch(p + 64);
  }

  // Claims a slot for an absent id; safe while other threads claim slots for other absent ids.
  // The caller reserves room first and reports the new ids with add_size() afterwards.
  void place_absent_concurrent(int64_t id, uint32_t row, uint32_t stamp);
  void add_size(uint64_t n) { size_ += n; }
  // Rows of n ids (kMissing where absent), in parallel with prefetching.
  void find_batch(const int64_t* ids, int64_t n, int64_t* rows) const;
  // Removes `id`; returns its row or kMissing.
  int64_t erase(int64_t id);
  // Makes room for `n` live ids without a rehash on the way.
  void reserve(uint64_t n);
  void clear();

  uint64_t size() const { return size_; }
  uint64_t capacity() const { return cap_; }
  size_t memory_bytes() const { return slots_.capacity() * sizeof(Slot); }

  // Calls f(slot) for every live slot, in slot order.
  template <class F>
  void for_each_slot(F&& f) const {
    for (const Slot& s : slots_)
      if (s.row1) f(s);
  }
  // The slot array (capacity() slots; live ones have row1 != 0), for parallel passes.
  Slot* slot_data() { return slots_.data(); }
  const Slot* slot_data() const { return slots_.data(); }

  struct Slot {
    int64_t id;
    uint32_t row1;  // row + 1; 0 marks an empty slot
    // The row's last_seen, as a stamp of the table's stamp clock (HashTable::last_seen_of maps
    // it to a step). The fused dedup + probe (dedup_keys with a DedupProbe) writes it: the first
    // value of a training lookup that reaches the slot stamps it from the lookup's stamp range,
    // which is also how later values of the lookup find their unique key.
    uint32_t stamp;
  };

 private:
  uint64_t home(int64_t id) const { return reduce_range(hash_id(id, ns_), cap_); }
  uint64_t next(uint64_t i) const { return i + 1 == cap_ ? 0 : i + 1; }
  void rehash(uint64_t new_cap);

  uint32_t ns_;
  std::vector<Slot> slots_;
  uint64_t cap_ = 0, size_ = 0;
};

}  // namespace recis

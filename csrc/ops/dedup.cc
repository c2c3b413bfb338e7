#include "ops/dedup.h"

#include <algorithm>

#include "common/hashing.h"

namespace recis {
namespace {

struct Entry {
  int64_t id;
  uint32_t epoch;
  uint32_t local;
};

// Reused across calls on the same thread: no per-step allocation once warm.
struct DedupWorkspace {
  std::vector<Entry> entries;
  uint32_t epoch = 0;
};

uint64_t next_pow2(uint64_t x) {
  uint64_t p = 16;
  while (p < x) p <<= 1;
  return p;
}

}  // namespace

void dedup_keys(const int64_t* values, const int64_t* bounds, const uint32_t* seg_ns, int64_t segments,
                int32_t* inverse, DedupResult& out) {
  int64_t n = 0;
  for (int64_t s = 0; s < segments; ++s) n += bounds[2 * s + 1] - bounds[2 * s];
  static thread_local DedupWorkspace ws;
  // Load <= 0.5 keeps probe runs short; the table is batch-sized and stays in cache.
  const uint64_t cap = next_pow2(static_cast<uint64_t>(2 * n));
  const uint64_t mask = cap - 1;
  if (ws.entries.size() < cap) {
    ws.entries.assign(cap, Entry{0, 0, 0});
    ws.epoch = 0;
  }
  if (++ws.epoch == 0) {  // wrapped: stale stamps could alias the new epoch
    std::fill(ws.entries.begin(), ws.entries.end(), Entry{0, 0, 0});
    ws.epoch = 1;
  }
  const uint32_t epoch = ws.epoch;
  Entry* table = ws.entries.data();
  out.ids.clear(), out.ns.clear(), out.counts.clear();
  bool single_ns = true;
  for (int64_t s = 1; s < segments; ++s) single_ns &= seg_ns[s] == seg_ns[0];
  // A single pass in value order: unique keys come out in first-seen order, which makes the
  // rows of new ids independent of the thread count.
  constexpr int64_t kAhead = 8;
  for (int64_t s = 0; s < segments; ++s) {
    const uint32_t ns = seg_ns[s];
    const int64_t b = bounds[2 * s], e = bounds[2 * s + 1];
    for (int64_t i = b; i < e; ++i) {
      if (i + kAhead < e) __builtin_prefetch(&table[hash_id(values[i + kAhead], ns) & mask]);
      const int64_t id = values[i];
      for (uint64_t j = hash_id(id, ns) & mask;; j = (j + 1) & mask) {
        Entry& en = table[j];
        if (en.epoch != epoch) {
          en = Entry{id, epoch, static_cast<uint32_t>(out.ids.size())};
          inverse[i] = static_cast<int32_t>(en.local);
          out.ids.push_back(id);
          out.ns.push_back(ns);
          out.counts.push_back(1);
          break;
        }
        if (en.id == id && (single_ns || out.ns[en.local] == ns)) {
          inverse[i] = static_cast<int32_t>(en.local);
          ++out.counts[en.local];
          break;
        }
      }
    }
  }
}

}  // namespace recis

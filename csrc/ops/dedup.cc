#include "ops/dedup.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

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
  std::vector<uint8_t> owner;
  std::vector<DedupResult> parts;
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
  int64_t n = 0, last = 0;
  for (int64_t s = 0; s < segments; ++s) n += bounds[2 * s + 1] - bounds[2 * s], last = bounds[2 * s + 1];
  static thread_local DedupWorkspace tls;
  DedupWorkspace& ws = tls;  // worker threads must see the caller's workspace
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n / 4096 + 1));
  const uint64_t part_cap = next_pow2(static_cast<uint64_t>(2 * n / threads + 16));
  const uint64_t mask = part_cap - 1;
  if (ws.entries.size() < part_cap * threads) {
    ws.entries.assign(part_cap * threads, Entry{0, 0, 0});
    ws.epoch = 0;
  }
  if (++ws.epoch == 0) {  // wrapped: stale stamps could alias the new epoch
    std::fill(ws.entries.begin(), ws.entries.end(), Entry{0, 0, 0});
    ws.epoch = 1;
  }
  const uint32_t epoch = ws.epoch;
  if (static_cast<int64_t>(ws.owner.size()) < last) ws.owner.resize(last);
  ws.parts.resize(threads);
  bool single_ns = true;
  for (int64_t s = 1; s < segments; ++s) single_ns &= seg_ns[s] == seg_ns[0];

  at::parallel_for(0, threads, 1, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      DedupResult& part = ws.parts[t];
      part.ids.clear(), part.ns.clear(), part.counts.clear();
      Entry* table = ws.entries.data() + t * part_cap;
      for (int64_t s = 0; s < segments; ++s) {
        const uint32_t ns = seg_ns[s];
        for (int64_t i = bounds[2 * s]; i < bounds[2 * s + 1]; ++i) {
          const int64_t id = values[i];
          const uint64_t h = hash_id(id, ns);
          if (threads > 1 && static_cast<int64_t>(reduce_range(h, threads)) != t) continue;
          uint64_t j = h & mask;
          for (;; j = (j + 1) & mask) {
            Entry& e = table[j];
            if (e.epoch != epoch) {
              e = Entry{id, epoch, static_cast<uint32_t>(part.ids.size())};
              part.ids.push_back(id);
              part.ns.push_back(ns);
              part.counts.push_back(1);
              break;
            }
            if (e.id == id && (single_ns || part.ns[e.local] == ns)) {
              ++part.counts[e.local];
              break;
            }
          }
          inverse[i] = static_cast<int32_t>(table[j].local);
          ws.owner[i] = static_cast<uint8_t>(t);
        }
      }
    }
  });

  std::vector<int64_t> base(threads + 1, 0);
  for (int64_t t = 0; t < threads; ++t) base[t + 1] = base[t] + ws.parts[t].size();
  out.ids.resize(base[threads]);
  out.ns.resize(base[threads]);
  out.counts.resize(base[threads]);
  for (int64_t t = 0; t < threads; ++t) {
    const DedupResult& p = ws.parts[t];
    std::copy(p.ids.begin(), p.ids.end(), out.ids.begin() + base[t]);
    std::copy(p.ns.begin(), p.ns.end(), out.ns.begin() + base[t]);
    std::copy(p.counts.begin(), p.counts.end(), out.counts.begin() + base[t]);
  }
  if (threads > 1) {
    for (int64_t s = 0; s < segments; ++s)
      at::parallel_for(bounds[2 * s], bounds[2 * s + 1], 16384, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) inverse[i] += static_cast<int32_t>(base[ws.owner[i]]);
      });
  }
}

}  // namespace recis

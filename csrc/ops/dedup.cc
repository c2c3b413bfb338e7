#include "ops/dedup.h"

#include "common/small_work.h"

#include <ATen/Parallel.h>

#include <algorithm>

#include "common/hashing.h"
#include "hashtable/id_map.h"

namespace recis {
namespace {

// Keys are split into a fixed number of hash partitions and values into a fixed number of
// chunks, so the unique order (partition by partition, first-seen within each) does not
// depend on the thread count.
constexpr int64_t kParts = 8;

struct Entry {
  int64_t id;
  uint32_t epoch;
  uint32_t local;
};

// Reused across calls on the same thread: no per-step allocation once warm.
struct DedupWorkspace {
  std::vector<Entry> entries;
  uint32_t epoch = 0;
  // The values grouped by key-hash partition, chunk by chunk within a partition and in value
  // order within a chunk (a counting sort): their position, id, hash and namespace (when the
  // segments' namespaces differ), and after step 2 their index among the partition's unique keys.
  std::vector<int64_t> pos, ids;
  std::vector<uint64_t> hashes;
  std::vector<uint32_t> ns;
  std::vector<int32_t> local;
  std::vector<DedupResult> parts;
  // [partition]: with DedupProbe::kRestore, the slots this call stamped and their old stamps.
  std::vector<std::vector<std::pair<IdMap::Slot*, uint32_t>>> saved;
};

uint64_t next_pow2(uint64_t x) {
  uint64_t p = 16;
  while (p < x) p <<= 1;
  return p;
}

inline int32_t partition_of(uint64_t h) { return static_cast<int32_t>(h >> 61); }  // kParts = 8

}  // namespace

void dedup_keys(const int64_t* values, const int64_t* bounds, const uint32_t* seg_ns, int64_t segments,
                int32_t* inverse, DedupResult& out, const DedupProbe* probe) {
  int64_t n = 0;
  for (int64_t s = 0; s < segments; ++s) n += bounds[2 * s + 1] - bounds[2 * s];
  static thread_local DedupWorkspace tls;
  DedupWorkspace& ws = tls;  // worker threads must see the caller's workspace
  // Per partition a table at load <= 0.5; tables are batch-sized and stay in cache.
  const uint64_t part_cap = next_pow2(static_cast<uint64_t>(2 * n / kParts + 16));
  if (ws.entries.size() < part_cap * kParts) {
    ws.entries.assign(part_cap * kParts, Entry{0, 0, 0});
    ws.epoch = 0;
  }
  if (++ws.epoch == 0) {  // wrapped: stale stamps could alias the new epoch
    std::fill(ws.entries.begin(), ws.entries.end(), Entry{0, 0, 0});
    ws.epoch = 1;
  }
  const uint32_t epoch = ws.epoch;
  ws.parts.resize(kParts);
  ws.saved.resize(kParts);
  const int save = probe ? probe->save : DedupProbe::kDiscard;
  bool single_ns = true;
  for (int64_t s = 1; s < segments; ++s) single_ns &= seg_ns[s] == seg_ns[0];
  // Values are cut into kParts chunks of (almost) equal size, across segments.
  std::vector<int64_t> seg_start(segments + 1, 0);
  for (int64_t s = 0; s < segments; ++s) seg_start[s + 1] = seg_start[s] + bounds[2 * s + 1] - bounds[2 * s];
  auto for_chunk = [&](int64_t c, auto&& f) {  // f(value position, namespace)
    const int64_t lo = n * c / kParts, hi = n * (c + 1) / kParts;
    for (int64_t s = 0; s < segments; ++s) {
      const int64_t a = std::max(lo, seg_start[s]), b = std::min(hi, seg_start[s + 1]);
      for (int64_t k = a; k < b; ++k) f(bounds[2 * s] + (k - seg_start[s]), seg_ns[s]);
    }
  };

  const int64_t grain = grain_for(n, kParts, 1);
  // 1. Group the values by key-hash partition (a counting sort, parallel over value chunks):
  // count each chunk's values per partition, then place them. Partition p's values end up in
  // [part_start[p], part_start[p + 1]), chunk by chunk.
  int64_t cursor[kParts][kParts];  // [chunk][partition]: counts, then where the next value goes
  at::parallel_for(0, kParts, grain, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      int64_t cnt[kParts] = {0};
      for_chunk(c, [&](int64_t i, uint32_t ns) { ++cnt[partition_of(hash_id(values[i], ns))]; });
      std::copy(cnt, cnt + kParts, cursor[c]);
    }
  });
  int64_t part_start[kParts + 1];
  part_start[0] = 0;
  for (int64_t p = 0, at = 0; p < kParts; ++p) {
    for (int64_t c = 0; c < kParts; ++c) {
      const int64_t k = cursor[c][p];
      cursor[c][p] = at;
      at += k;
    }
    part_start[p + 1] = at;
  }
  ws.pos.resize(n), ws.ids.resize(n), ws.hashes.resize(n), ws.local.resize(n);
  if (!single_ns) ws.ns.resize(n);
  at::parallel_for(0, kParts, grain, [&](int64_t cb, int64_t ce) {
    int64_t* pos = ws.pos.data();
    int64_t* ids = ws.ids.data();
    uint64_t* hashes = ws.hashes.data();
    uint32_t* nsv = ws.ns.data();
    for (int64_t c = cb; c < ce; ++c) {
      int64_t at[kParts];
      std::copy(cursor[c], cursor[c] + kParts, at);
      for_chunk(c, [&](int64_t i, uint32_t ns) {  // hashed again, not kept from the count pass
        const int64_t id = values[i];
        const uint64_t h = hash_id(id, ns);
        const int64_t k = at[partition_of(h)]++;
        pos[k] = i, ids[k] = id, hashes[k] = h;
        if (!single_ns) nsv[k] = ns;
      });
    }
  });
  // 2. Each partition dedups its values in value order (parallel over partitions). With a
  // probe, a partition's marks start after those of the partitions before it.
  uint32_t part_mark[kParts] = {0};
  if (probe)
    for (int64_t p = 0; p < kParts; ++p) part_mark[p] = static_cast<uint32_t>(probe->mark_base + part_start[p]);
  at::parallel_for(0, kParts, grain, [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) {
      DedupResult& part = ws.parts[p];
      part.ids.clear(), part.ns.clear(), part.counts.clear(), part.rows.clear(), part.old.clear();
      std::vector<std::pair<IdMap::Slot*, uint32_t>>& saved = ws.saved[p];
      saved.clear();
      Entry* table = ws.entries.data() + p * part_cap;
      const uint64_t mask = part_cap - 1;
      const int64_t kb = part_start[p], ke = part_start[p + 1];
      const int64_t* ids = ws.ids.data();
      const uint64_t* hashes = ws.hashes.data();
      const uint32_t* nsv = ws.ns.data();
      int32_t* local = ws.local.data();
      for (int64_t k = kb; k < ke; ++k) {
        const int64_t id = ids[k];
        const uint32_t ns = single_ns ? seg_ns[0] : nsv[k];
        if (probe) {
          if (k + IdMap::kAhead < ke)
            probe->maps[single_ns ? seg_ns[0] : nsv[k + IdMap::kAhead]]->prefetch_h(hashes[k + IdMap::kAhead]);
          IdMap::Slot* s = probe->maps[ns]->find_slot_h(id, hashes[k]);
          if (s) {
            // Marks of this call are >= mark_base; the slot is this key's, and only this
            // partition's values reach it.
            if (s->stamp >= probe->mark_base) {
              const uint32_t l = s->stamp - part_mark[p];
              ++part.counts[l];
              local[k] = static_cast<int32_t>(l);
            } else {
              const uint32_t l = static_cast<uint32_t>(part.ids.size());
              if (save == DedupProbe::kKeepOld) part.old.push_back(s->stamp);
              else if (save == DedupProbe::kRestore) saved.emplace_back(s, s->stamp);
              s->stamp = part_mark[p] + l;
              part.ids.push_back(id);
              part.ns.push_back(ns);
              part.counts.push_back(1);
              part.rows.push_back(static_cast<int64_t>(s->row1) - 1);
              local[k] = static_cast<int32_t>(l);
            }
            continue;
          }
        } else if (k + 8 < ke) {
          __builtin_prefetch(&table[hashes[k + 8] & mask]);
        }
        for (uint64_t j = hashes[k] & mask;; j = (j + 1) & mask) {
          Entry& en = table[j];
          if (en.epoch != epoch) {
            en = Entry{id, epoch, static_cast<uint32_t>(part.ids.size())};
            part.ids.push_back(id);
            part.ns.push_back(ns);
            part.counts.push_back(1);
            if (probe) part.rows.push_back(-1);
            if (save == DedupProbe::kKeepOld) part.old.push_back(0);
            local[k] = static_cast<int32_t>(en.local);
            break;
          }
          if (en.id == id && (single_ns || part.ns[en.local] == ns)) {
            ++part.counts[en.local];
            local[k] = static_cast<int32_t>(en.local);
            break;
          }
        }
      }
      // Only this partition's values reach its keys' slots: they are all done here.
      for (const auto& [slot, old] : saved) slot->stamp = old;
    }
  });
  // 3. Concatenate the partitions; each chunk writes the global indices of its own values.
  int64_t base[kParts + 1] = {0};
  for (int64_t p = 0; p < kParts; ++p) base[p + 1] = base[p] + ws.parts[p].size();
  out.ids.resize(base[kParts]);
  out.ns.resize(base[kParts]);
  out.counts.resize(base[kParts]);
  out.rows.resize(probe ? base[kParts] : 0);
  out.old.resize(save == DedupProbe::kKeepOld ? base[kParts] : 0);
  at::parallel_for(0, kParts, grain, [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) {
      const DedupResult& part = ws.parts[p];
      std::copy(part.ids.begin(), part.ids.end(), out.ids.begin() + base[p]);
      std::copy(part.ns.begin(), part.ns.end(), out.ns.begin() + base[p]);
      std::copy(part.counts.begin(), part.counts.end(), out.counts.begin() + base[p]);
      if (probe) std::copy(part.rows.begin(), part.rows.end(), out.rows.begin() + base[p]);
      if (save == DedupProbe::kKeepOld) std::copy(part.old.begin(), part.old.end(), out.old.begin() + base[p]);
    }
  });
  at::parallel_for(0, kParts, grain, [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p)
      for (int64_t k = part_start[p]; k < part_start[p + 1]; ++k)
        inverse[ws.pos[k]] = static_cast<int32_t>(base[p] + ws.local[k]);
  });
}

}  // namespace recis

// Batch-local dedup of (namespace, id) keys: unique keys plus the inverse index.
#pragma once
#include <cstdint>
#include <vector>

namespace recis {

class IdMap;

struct DedupResult {
  std::vector<int64_t> ids;      // unique ids
  std::vector<int64_t> rows;     // with a DedupProbe: each unique key's row in its id map, or -1
  std::vector<uint32_t> ns;      // their namespaces
  std::vector<uint32_t> counts;  // sightings of each unique key in the batch
  std::vector<uint32_t> old;     // with DedupProbe::kKeepOld: each found key's stamp before this call
  int64_t size() const { return static_cast<int64_t>(ids.size()); }
};

// Segment s covers values [bounds[2s], bounds[2s + 1]) of namespace seg_ns[s]; values outside
// every segment are left alone. Writes inverse[i] (index into the unique keys).
// Unique keys are numbered by hash partition, then first-seen order, whatever the thread count.
//
// With a probe, the dedup is fused with the id-map probe: each value is hashed once, and that
// hash both partitions it and probes maps[ns]; a hit dedups on its map slot (the first value
// of the call that reaches the slot stamps it with mark_base + the value's unique position;
// later ones read the stamp back), and only misses (new ids) go through the dedup's own hash
// set. The unique order, inverse and counts are exactly those without a probe; out.rows gets
// the rows found. The stamps of one call lie in [mark_base, mark_base + n): the caller makes
// sure no slot holds a stamp >= mark_base from an earlier call (see HashTable::dedup_probe).
// The stamps are the slots' last_seen: `save` says what happens to the stamps they replace:
// kDiscard drops them (a training lookup), kKeepOld writes them to out.old (a training lookup
// that may still be refused and undone), kRestore puts them back before returning (an eval
// lookup, which must not change last_seen).
struct DedupProbe {
  enum Save : int { kDiscard = 0, kKeepOld = 1, kRestore = 2 };
  IdMap* const* maps;
  uint32_t mark_base;
  Save save = kDiscard;
};
void dedup_keys(const int64_t* values, const int64_t* bounds, const uint32_t* seg_ns, int64_t segments,
                int32_t* inverse, DedupResult& out, const DedupProbe* probe = nullptr);

}  // namespace recis

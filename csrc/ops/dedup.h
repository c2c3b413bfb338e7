// Batch-local dedup of (namespace, id) keys: unique keys plus the inverse index.
#pragma once
#include <cstdint>
#include <vector>

namespace recis {

struct DedupResult {
  std::vector<int64_t> ids;      // unique ids
  std::vector<uint32_t> ns;      // their namespaces
  std::vector<uint32_t> counts;  // sightings of each unique key in the batch
  int64_t size() const { return static_cast<int64_t>(ids.size()); }
};

// Segment s covers values [bounds[2s], bounds[2s + 1]) of namespace seg_ns[s]; values outside
// every segment are left alone. Writes inverse[i] (index into the unique keys).
// Unique keys are numbered by hash partition, then first-seen order, whatever the thread count.
void dedup_keys(const int64_t* values, const int64_t* bounds, const uint32_t* seg_ns, int64_t segments,
                int32_t* inverse, DedupResult& out);

}  // namespace recis

// HashTable: one row store shared by one or more id maps ("namespaces"), plus admission,
// eviction and the buffer of pending sparse gradients.
#pragma once
#include <cstdint>
#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "hashtable/count_sketch.h"
#include "hashtable/id_map.h"
#include "hashtable/initializer.h"
#include "hashtable/row_store.h"

namespace recis {

enum class MissingMode : int32_t { kZeros = 0, kInit = 1 };
enum class EvictPolicy : int32_t { kNone = 0, kLfu = 1 };
// The names recis.vocabulary knows them by (MISSING_MODES, EVICT_POLICIES).
inline constexpr std::pair<const char*, MissingMode> kMissingModeNames[] = {{"zeros", MissingMode::kZeros},
                                                                          {"init", MissingMode::kInit}};
inline constexpr std::pair<const char*, EvictPolicy> kEvictPolicyNames[] = {{"none", EvictPolicy::kNone},
                                                                          {"lfu", EvictPolicy::kLfu}};

// Per-unique-row gradients waiting for the optimizer; reused across steps.
struct PendingGrads {
  std::vector<int64_t> rows;
  std::vector<float> grads;
  std::vector<uint8_t> finite;
  int64_t n = 0;
  int segments = 0;
  // The smallest last_seen of the rows held here (when they arrived): rows seen at or after it
  // stay protected.
  uint32_t min_last_seen = UINT32_MAX;
  float* append(int64_t count, int64_t dim);
  void clear() { n = 0, segments = 0, min_last_seen = UINT32_MAX; }
  // Sums rows that appear in several segments (gradient accumulation) into one entry.
  void merge_duplicates(int64_t dim);
};

struct TableStats {
  uint64_t inserts = 0, evictions = 0, not_admitted = 0;
};

// Debug counters of the work lookups do on the id maps (not checkpointed, not in stats()):
// key_hashes counts hash_id computations on keys (dedup, map probes, inserts), map_probes the
// id-map probes (finds and slot claims).
struct ProbeCounters {
  uint64_t key_hashes = 0, map_probes = 0;
};

struct DedupResult;

// A row selected for export: its id, row and last_seen stamp.
struct SlotRef {
  int64_t id;
  uint32_t row, stamp;
};

class HashTable {
 public:
  HashTable(int64_t dim, const std::vector<uint64_t>& seeds, InitSpec init);
  ~HashTable();

  // ---- configuration ----
  // Sets the optimizer slot layout. Existing rows keep their slots when the width is unchanged
  // and `reset` is false; otherwise their slots restart from `init`.
  void set_slots(int64_t width, const std::vector<float>& init, bool reset);
  void set_admission(uint32_t min_count, uint64_t width, int depth);
  void set_capacity(uint32_t ns, uint64_t capacity, EvictPolicy policy, double evict_fraction);
  void set_missing(MissingMode m) { missing_ = m; }
  // TTL eviction (ttl_steps 0: none): at every training-step boundary whose step is a positive
  // multiple of `interval_steps`, rows unseen for more than `ttl_steps` steps are erased.
  void set_ttl(uint32_t ttl_steps, uint64_t interval_steps);
  MissingMode missing() const { return missing_; }

  // ---- lookups ----
  // Resolves n distinct (ns, id) keys to rows. In training, hits get their count and
  // last-seen step updated (unless `!touch_hits`), and misses are admitted, evicted for and
  // inserted; keys that get no row come back as -1. `counts` holds the sightings of each key
  // in the batch. `admit_all` bypasses admission (explicit inserts). When it throws (capacity),
  // the table is unchanged.
  // With `prefound`, rows[i] already holds each key's row or -1 (from dedup_probe) and the
  // table is not probed again.
  void resolve(const uint32_t* ns, const int64_t* ids, const uint32_t* counts, int64_t n, bool train,
               int64_t* rows, bool admit_all = false, bool touch_hits = true, bool prefound = false);
  // dedup_keys fused with the id-map probe (see DedupProbe): one hash and one map probe per
  // value; out.rows holds the unique keys' rows (-1: absent), ready for resolve(prefound).
  // In training the stamps it writes are the found rows' last_seen (this step); when the table
  // has a capacity (the lookup may still be refused) out.old keeps the stamps they replaced, for
  // undo_probe. Otherwise (eval) every stamp is back as it was when it returns.
  void dedup_probe(const int64_t* values, const int64_t* bounds, const uint32_t* seg_ns, int64_t segments,
                   int32_t* inverse, DedupResult& out, bool train = true);
  // Puts back the last_seen of the rows a refused training dedup_probe stamped.
  void undo_probe(const DedupResult& probed);
  void find(uint32_t ns, const int64_t* ids, int64_t n, int64_t* rows) const;
  // Inserts whatever is missing (no admission); capacity rules still apply.
  void find_or_insert(uint32_t ns, const int64_t* ids, int64_t n, int64_t* rows);
  int64_t erase(uint32_t ns, const int64_t* ids, int64_t n);
  void fill_initial(uint32_t ns, int64_t id, float* dst) const;
  // Pre-sizes namespace ns for `n` more ids: no rehash and no fresh pages while they arrive.
  void reserve(uint32_t ns, uint64_t n);
  int64_t evict_ttl(uint32_t ttl_steps);

  // ---- export / import of one namespace ----
  void export_ns(uint32_t ns, int64_t* ids, float* emb, float* slots, int64_t* counts, int64_t* last_seen) const;
  // The rows of namespace ns whose last_seen >= since (rows a training lookup or an insert
  // touched at or after step `since`), in id-map order; since = 0 selects every row. Reads the
  // id map's slots only (their stamps), not the row store.
  std::vector<SlotRef> rows_since(uint32_t ns, uint32_t since) const;
  // Copies the selected rows out (arrays of sel.size() entries; slots only with a slot layout).
  void export_rows(const std::vector<SlotRef>& sel, int64_t* ids, float* emb, float* slots, int64_t* counts,
                   int64_t* last_seen) const;
  void import_ns(uint32_t ns, int64_t n, const int64_t* ids, const float* emb, const float* slots,
                 const int64_t* counts, const int64_t* last_seen);
  void clear();

  // ---- accessors ----
  int64_t dim() const { return store_.dim(); }
  int64_t slot_width() const { return store_.slot_width(); }
  uint32_t num_namespaces() const { return static_cast<uint32_t>(maps_.size()); }
  uint64_t size(uint32_t ns) const { return maps_.at(ns)->size(); }
  uint64_t map_capacity(uint32_t ns) const { return maps_.at(ns)->capacity(); }
  size_t memory_bytes() const;
  size_t map_bytes(uint32_t ns) const { return maps_.at(ns)->memory_bytes(); }
  const RowStore& store() const { return store_; }
  RowStore& store() { return store_; }
  uint32_t step() const { return step_; }
  void set_step(uint32_t s) { step_ = s; }
  // Starts the next training step: first the TTL sweep due at this boundary, then step + 1.
  void advance_step();

  // ---- rows a gradient may still reach ----
  // A gradient must never land on a row that was handed to another id, so rows stay protected
  // from eviction while a gradient may still reach them: a training forward that expects a
  // backward holds its step from the forward until its autograd graph is freed (the lease is
  // tied to the storage of its unique_rows output, see lookup_forward), and pending gradients
  // hold their rows until the optimizer's step() or zero_grad(). Rows seen at or after the
  // oldest hold are never evicted. Forward leases are counted under their own lock, as their
  // release runs wherever the graph is freed.
  // `rows` (n entries, alive until release_forward) are the forward's unique rows in this table:
  // a backward that hands the same rows to append_pending is known to come from this forward.
  void add_forward(uint32_t step, const int64_t* rows = nullptr, int64_t n = 0);
  void release_forward(uint32_t step, const int64_t* rows = nullptr);
  int64_t live_forwards() const;
  // Whether backward keeps gradients for an optimizer (one is attached); else it drops them.
  void set_keep_grads(bool keep) { keep_grads_ = keep; }
  bool keep_grads() const { return keep_grads_; }
  // Room for `count` more pending gradient rows (copied from `rows`); returns where their
  // gradients go. Merges duplicate rows first when the buffer outgrows the live rows, so its
  // memory stays bounded by the table however many backward passes come before a step().
  float* append_pending(const int64_t* rows, int64_t count, uint8_t** finite);
  // Drops the pending gradients (after the optimizer applied them, or zero_grad()).
  void clear_pending() { pending_.clear(); }
  void set_name(uint32_t ns, std::string name);
  CountSketch& sketch() { return sketch_; }
  PendingGrads& pending() { return pending_; }
  const TableStats& stats() const { return stats_; }
  const ProbeCounters& probe_counters() const { return probes_; }
  void check_ns(uint32_t ns) const;

  // ---- the stamp clock (last_seen in the id map's slots) ----
  // A slot's stamp maps to a step through epochs {begin, step}: the step of the last epoch with
  // begin <= stamp. Stamps are handed out increasing: a training lookup's dedup takes a range of
  // n stamps for the current step; other writers (inserts, resolve's touch, import) take one
  // stamp per step (per imported step value). Before the clock would pass its bound, or when
  // the epochs outgrow theirs, compact() renumbers the live stamps 1..K by distinct step.
  uint32_t last_seen_of(uint32_t stamp) const {
    auto it = std::upper_bound(epoch_begin_.begin(), epoch_begin_.end(), stamp);
    return epoch_step_[static_cast<size_t>(it - epoch_begin_.begin()) - 1];
  }
  void compact_stamps();
  // Test hooks: the clock's bound (compaction comes before it is passed) and its state.
  void set_stamp_limit(uint32_t limit) { stamp_limit_ = limit; }
  struct StampState {
    uint32_t next;
    uint64_t epochs, compactions;
    bool steps_sorted;
  };
  StampState stamp_state() const {
    return {stamp_next_, epoch_begin_.size(), compactions_, steps_sorted_};
  }

  std::mutex mu;  // one op at a time per table

 private:
  // Gives the keys `which` (indices into ns/ids/counts) fresh rows, written to rows[i];
  // incoming[s] counts those of namespace s.
  void insert_new(const uint32_t* ns, const int64_t* ids, const uint32_t* counts, const std::vector<int64_t>& which,
                  const std::vector<uint64_t>& incoming, int64_t* rows);
  void drop_row(uint32_t ns, int64_t id);
  // Evicts (LFU) so `incoming` new ids fit under the capacity; rows in `keep` (sorted) stay.
  void make_room(uint32_t ns, uint64_t incoming, const std::vector<int64_t>& keep);
  uint32_t protected_from() const;
  // The stamp that marks step `step` for a writer outside the dedup (one per step).
  uint32_t stamp_for(uint32_t step, bool may_compact = true);
  // Makes room for n more stamps on the clock (compacts when needed).
  void ensure_stamps(uint64_t n);
  void push_epoch(uint32_t begin, uint32_t step);
  // With epochs whose steps never decrease: the smallest stamp whose last_seen >= step
  // (UINT32_MAX: none). Callers check steps_sorted_ first.
  uint32_t stamp_from(uint32_t step) const;
  // Whether a slot's last_seen >= `step`: one compare of its stamp when the epochs' steps are
  // sorted (the usual case), else the stamp's step looked up.
  struct SeenSince {
    const HashTable* table;
    uint32_t step, from;
    bool sorted;
    bool operator()(uint32_t stamp) const { return sorted ? stamp >= from : table->last_seen_of(stamp) >= step; }
  };
  SeenSince seen_since(uint32_t step) const {
    return {this, step, steps_sorted_ ? stamp_from(step) : 0, steps_sorted_};
  }
  // Whether any namespace has a capacity (a lookup may then be refused).
  bool bounded() const {
    return std::any_of(capacity_.begin(), capacity_.end(), [](uint64_t c) { return c != 0; });
  }
  // The smallest last_seen of `rows` (-1 entries ignored; UINT32_MAX when none has a row).
  uint32_t min_last_seen_of_rows(const int64_t* rows, int64_t count) const;
  // Why only `cands` rows of namespace ns may be evicted: what holds the others.
  std::string holds_message(uint32_t ns, uint64_t cap, uint64_t incoming, uint64_t cands, size_t batch_rows) const;
  std::string label(uint32_t ns) const;

  RowStore store_;
  std::vector<std::unique_ptr<IdMap>> maps_;
  std::vector<uint64_t> seeds_;
  std::vector<uint64_t> capacity_;
  std::vector<EvictPolicy> policy_;
  std::vector<double> evict_fraction_;
  InitSpec init_;
  std::vector<float> slot_init_;
  uint32_t min_count_ = 0;
  CountSketch sketch_;
  MissingMode missing_ = MissingMode::kZeros;
  uint32_t step_ = 0;
  uint32_t ttl_steps_ = 0;
  uint64_t ttl_interval_ = 0;
  mutable std::mutex lease_mu_;               // guards live_ and lease_rows_; never held while taking another lock
  std::map<uint32_t, int64_t> live_;          // step -> training forwards of that step still alive
  struct LeaseRows {
    const int64_t* rows;
    int64_t n;
    uint32_t step;
  };
  std::vector<LeaseRows> lease_rows_;         // the unique rows of live forwards (see add_forward)
  bool keep_grads_ = false;
  std::vector<std::string> names_;
  PendingGrads pending_;
  TableStats stats_;
  ProbeCounters probes_;
  // The stamp clock: epochs as two parallel arrays (begins increasing), the next free stamp.
  std::vector<uint32_t> epoch_begin_{0}, epoch_step_{0};
  uint32_t stamp_next_ = 1;
  uint32_t stamp_limit_ = UINT32_MAX - 1;
  size_t epoch_limit_ = size_t(1) << 20;
  bool steps_sorted_ = true;  // epoch_step_ never decreases
  uint64_t compactions_ = 0;
  int64_t insert_stamp_ = -1;  // >= 0: the stamp insert_new gives new rows (import overwrites it)
};

}  // namespace recis

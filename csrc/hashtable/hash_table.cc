#include "hashtable/hash_table.h"

#include "common/finite.h"
#include "ops/dedup.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>
#include <tuple>
#include <unordered_map>

namespace recis {

// ---------------------------------------------------------------- PendingGrads

float* PendingGrads::append(int64_t count, int64_t dim) {
  const int64_t total = n + count;
  if (static_cast<int64_t>(rows.size()) < total) {
    rows.resize(total);
    finite.resize(total);
  }
  if (static_cast<int64_t>(grads.size()) < total * dim) grads.resize(total * dim);
  float* out = grads.data() + n * dim;
  n = total;
  ++segments;
  return out;
}

void PendingGrads::merge_duplicates(int64_t dim) {
  if (segments <= 1) return;
  std::unordered_map<int64_t, int64_t> first;
  first.reserve(static_cast<size_t>(n));
  int64_t out = 0;
  for (int64_t i = 0; i < n; ++i) {
    auto [it, fresh] = first.emplace(rows[i], out);
    float* src = grads.data() + i * dim;
    if (fresh) {
      if (out != i) {
        rows[out] = rows[i];
        finite[out] = finite[i];
        std::memmove(grads.data() + out * dim, src, sizeof(float) * dim);
      }
      ++out;
    } else {
      float* dst = grads.data() + it->second * dim;
      for (int64_t j = 0; j < dim; ++j) dst[j] += src[j];
      finite[it->second] &= finite[i];
    }
  }
  n = out;
  segments = 1;
  // A sum of finite gradients can still overflow.
  for (int64_t i = 0; i < n; ++i) finite[i] &= all_finite(grads.data() + i * dim, dim);
}

// ---------------------------------------------------------------- HashTable

HashTable::HashTable(int64_t dim, const std::vector<uint64_t>& seeds, InitSpec init)
    : store_(dim, 0), seeds_(seeds), capacity_(seeds.size(), 0), policy_(seeds.size(), EvictPolicy::kNone),
      evict_fraction_(seeds.size(), 0.0), init_(init) {
  TORCH_CHECK_VALUE(dim > 0, "embedding_dim must be positive, got ", dim);
  TORCH_CHECK_VALUE(!seeds.empty(), "a table needs at least one namespace");
  for (uint32_t ns = 0; ns < seeds.size(); ++ns) maps_.push_back(std::make_unique<IdMap>(ns));
}

HashTable::~HashTable() = default;

void HashTable::check_ns(uint32_t ns) const {
  TORCH_CHECK_INDEX(ns < maps_.size(), "namespace ", ns, " out of range for a table with ", maps_.size());
}

void HashTable::set_slots(int64_t width, const std::vector<float>& init, bool reset) {
  TORCH_CHECK_VALUE(static_cast<int64_t>(init.size()) == width, "slot init has ", init.size(), " values, expected ", width);
  const bool same_width = width == store_.slot_width();
  store_.relayout(width, init);
  if (same_width && width > 0 && reset) {
    for (auto& m : maps_)
      m->for_each_slot([&](const IdMap::Slot& sl) {
        std::memcpy(store_.slots(sl.row1 - 1), init.data(), sizeof(float) * width);
      });
  }
  slot_init_ = init;
}

void HashTable::set_admission(uint32_t min_count, uint64_t width, int depth) {
  TORCH_CHECK_VALUE(depth >= 1 && depth <= CountSketch::kMaxDepth, "sketch depth must be in [1, 8], got ", depth);
  min_count_ = min_count;
  sketch_ = min_count > 1 ? CountSketch(width, depth) : CountSketch();
}

void HashTable::set_capacity(uint32_t ns, uint64_t capacity, EvictPolicy policy, double evict_fraction) {
  check_ns(ns);
  capacity_[ns] = capacity;
  policy_[ns] = policy;
  evict_fraction_[ns] = evict_fraction;
}

void HashTable::reserve(uint32_t ns, uint64_t n) {
  check_ns(ns);
  TORCH_CHECK_VALUE(n <= RowStore::kMaxRows, "recis: cannot reserve ", n, " rows");
  maps_[ns]->reserve(maps_[ns]->size() + n);
  store_.reserve(static_cast<uint32_t>(n));
}

void HashTable::fill_initial(uint32_t ns, int64_t id, float* dst) const {
  fill_initial_row(init_, seeds_[ns], id, dst, store_.dim());
}

void HashTable::drop_row(uint32_t ns, int64_t id) {
  const int64_t r = maps_[ns]->erase(id);
  if (r >= 0) store_.release(static_cast<uint32_t>(r));
}

void HashTable::add_forward(uint32_t step, const int64_t* rows, int64_t n) {
  std::lock_guard<std::mutex> lock(lease_mu_);
  ++live_[step];
  if (rows) lease_rows_.push_back({rows, n, step});
}

void HashTable::release_forward(uint32_t step, const int64_t* rows) {
  std::lock_guard<std::mutex> lock(lease_mu_);
  auto it = live_.find(step);
  if (it != live_.end() && --it->second == 0) live_.erase(it);
  if (rows)
    for (size_t i = 0; i < lease_rows_.size(); ++i)
      if (lease_rows_[i].rows == rows && lease_rows_[i].step == step) {
        lease_rows_[i] = lease_rows_.back();
        lease_rows_.pop_back();
        break;
      }
}

uint32_t HashTable::min_last_seen_of_rows(const int64_t* rows, int64_t count) const {
  bool any = false;
  for (int64_t i = 0; i < count; ++i) any |= rows[i] >= 0;
  if (!any) return UINT32_MAX;
  {
    // The usual case: these are the rows of a live forward of this very step (no training
    // lookup came after it), each stamped by that forward, so their last_seen is this step.
    std::lock_guard<std::mutex> lock(lease_mu_);
    for (const LeaseRows& l : lease_rows_)
      if (l.step == step_ && l.n >= count &&
          (l.rows == rows || std::memcmp(l.rows, rows, sizeof(int64_t) * static_cast<size_t>(count)) == 0))
        return step_;
  }
  // Otherwise (a backward after later training lookups, or rows that are no live forward's):
  // read the rows' stamps in one pass over the id maps.
  const uint32_t hw = store_.high_water();
  std::vector<uint64_t> in((static_cast<size_t>(hw) + 63) / 64, 0);
  for (int64_t i = 0; i < count; ++i)
    if (rows[i] >= 0 && rows[i] < hw) in[rows[i] >> 6] |= uint64_t(1) << (rows[i] & 63);
  uint32_t best = UINT32_MAX;
  for (const auto& m : maps_)
    m->for_each_slot([&](const IdMap::Slot& sl) {
      const uint32_t r = sl.row1 - 1;
      if (in[r >> 6] >> (r & 63) & 1) best = std::min(best, last_seen_of(sl.stamp));
    });
  return best;
}

int64_t HashTable::live_forwards() const {
  std::lock_guard<std::mutex> lock(lease_mu_);
  int64_t n = 0;
  for (const auto& kv : live_) n += kv.second;
  return n;
}

float* HashTable::append_pending(const int64_t* rows, int64_t count, uint8_t** finite) {
  PendingGrads& pg = pending_;
  uint64_t live = 0;
  for (const auto& m : maps_) live += m->size();
  // Merged, the buffer holds each row once (plus one entry for keys without a row).
  if (pg.segments > 1 && static_cast<uint64_t>(pg.n) > 2 * (live + 1)) pg.merge_duplicates(store_.dim());
  const int64_t start = pg.n;
  float* grads = pg.append(count, store_.dim());
  std::memcpy(pg.rows.data() + start, rows, sizeof(int64_t) * count);
  pg.min_last_seen = std::min(pg.min_last_seen, min_last_seen_of_rows(rows, count));
  *finite = pg.finite.data() + start;
  return grads;
}

void HashTable::set_name(uint32_t ns, std::string name) {
  check_ns(ns);
  if (names_.size() < maps_.size()) names_.resize(maps_.size());
  names_[ns] = std::move(name);
}

std::string HashTable::label(uint32_t ns) const {
  std::ostringstream out;
  if (ns < names_.size() && !names_[ns].empty()) out << "table '" << names_[ns] << "' (namespace " << ns << ")";
  else out << "namespace " << ns;
  return out.str();
}

uint32_t HashTable::protected_from() const {
  // Rows seen at or after this step may still receive gradients: never evict them.
  uint32_t guard = step_;
  if (pending_.n) guard = std::min(guard, pending_.min_last_seen);
  std::lock_guard<std::mutex> lock(lease_mu_);
  if (!live_.empty()) guard = std::min(guard, live_.begin()->first);
  return guard;
}

namespace {

// What holds a table's rows (some live forwards and/or pending gradients), and how to release them.
void describe_holds(std::ostringstream& out, int64_t forwards, int64_t pending) {
  out << "Rows stay protected while a gradient may still reach them; here they are held by ";
  if (forwards) {
    out << forwards << " forward pass" << (forwards == 1 ? "" : "es")
        << " in training mode whose outputs are still alive (a backward may still come)";
    if (pending) out << " and by ";
  }
  if (pending) out << pending << " rows with gradients waiting for the sparse optimizer's step() or zero_grad()";
  out << ". To release them, call backward() and the sparse optimizer's step() (or zero_grad()), or drop the "
         "outputs you do not backpropagate; for forward-only use (scoring, feature extraction) run the model in "
         "eval() mode or under torch.no_grad()";
}

}  // namespace

std::string HashTable::holds_message(uint32_t ns, uint64_t cap, uint64_t incoming, uint64_t cands,
                                     size_t batch_rows) const {
  std::ostringstream out;
  out << "recis: " << label(ns) << " is at its capacity of " << cap << " rows and cannot make room for the "
      << incoming << " new ids of this batch: only " << cands << " rows may be evicted. ";
  const int64_t forwards = live_forwards();
  const int64_t pending = pending_.n;
  if (forwards == 0 && pending == 0) {
    out << "The other rows belong to this batch (" << batch_rows
        << " of its ids already have rows); raise the capacity or send smaller batches";
    return out.str();
  }
  describe_holds(out, forwards, pending);
  return out.str();
}

void HashTable::make_room(uint32_t ns, uint64_t incoming, const std::vector<int64_t>& keep) {
  const uint64_t cap = capacity_[ns];
  if (cap == 0) return;
  const uint64_t size = maps_[ns]->size();
  if (size + incoming <= cap) return;
  const uint64_t need = size + incoming - cap;
  TORCH_CHECK(policy_[ns] != EvictPolicy::kNone, "recis: table capacity reached: ", label(ns), " holds ", size,
              " of ", cap, " rows and ", incoming,
              " new ids arrived; configure an eviction policy or raise the capacity (no row was overwritten)");
  struct Cand {
    uint32_t count, last_seen;
    int64_t id;
  };
  std::vector<Cand> cands;
  const uint32_t guard = protected_from();
  const SeenSince guarded = seen_since(guard);
  maps_[ns]->for_each_slot([&](const IdMap::Slot& sl) {
    const uint32_t r = sl.row1 - 1;
    if (guarded(sl.stamp)) return;
    if (!std::binary_search(keep.begin(), keep.end(), static_cast<int64_t>(r)))
      cands.push_back({store_.meta(r)->count, last_seen_of(sl.stamp), sl.id});
  });
  TORCH_CHECK(cands.size() >= need, holds_message(ns, cap, incoming, cands.size(), keep.size()));
  uint64_t k = std::max<uint64_t>(need, static_cast<uint64_t>(std::ceil(evict_fraction_[ns] * cap)));
  k = std::min<uint64_t>(k, cands.size());
  auto less = [](const Cand& a, const Cand& b) {
    return std::tie(a.count, a.last_seen, a.id) < std::tie(b.count, b.last_seen, b.id);
  };
  std::nth_element(cands.begin(), cands.begin() + (k - 1), cands.end(), less);
  for (uint64_t i = 0; i < k; ++i) drop_row(ns, cands[i].id);
  stats_.evictions += k;
}

void HashTable::dedup_probe(const int64_t* values, const int64_t* bounds, const uint32_t* seg_ns, int64_t segments,
                            int32_t* inverse, DedupResult& out, bool train) {
  int64_t n = 0;
  for (int64_t s = 0; s < segments; ++s) {
    check_ns(seg_ns[s]);
    n += bounds[2 * s + 1] - bounds[2 * s];
  }
  // Stamps of earlier calls are below this call's range [stamp_next_, stamp_next_ + n).
  if (train && !steps_sorted_) compact_stamps();  // steps went back (import, set_step): sort them once
  ensure_stamps(static_cast<uint64_t>(n));
  static thread_local std::vector<IdMap*> maps_tls;
  std::vector<IdMap*>& maps = maps_tls;
  maps.clear();
  for (auto& m : maps_) maps.push_back(m.get());
  DedupProbe probe{maps.data(), stamp_next_};
  if (train) {
    // The range becomes this step's: the stamps the probe writes are the rows' last_seen.
    probe.save = bounded() ? DedupProbe::kKeepOld : DedupProbe::kDiscard;
    if (n > 0) {
      if (epoch_step_.back() != step_) push_epoch(stamp_next_, step_);
      stamp_next_ += static_cast<uint32_t>(n);
    }
  } else {
    probe.save = DedupProbe::kRestore;  // the range is borrowed: every stamp goes back
  }
  dedup_keys(values, bounds, seg_ns, segments, inverse, out, &probe);
  probes_.key_hashes += n;
  probes_.map_probes += n;
}

void HashTable::undo_probe(const DedupResult& probed) {
  if (probed.old.size() != probed.ids.size()) return;
  for (int64_t u = 0; u < probed.size(); ++u) {
    if (probed.rows[u] < 0) continue;
    IdMap::Slot* sl = maps_[probed.ns[u]]->find_slot(probed.ids[u]);
    if (sl) sl->stamp = probed.old[u];
  }
}

void HashTable::push_epoch(uint32_t begin, uint32_t step) {
  if (step < epoch_step_.back()) steps_sorted_ = false;
  epoch_begin_.push_back(begin);
  epoch_step_.push_back(step);
}

void HashTable::ensure_stamps(uint64_t n) {
  if (static_cast<uint64_t>(stamp_next_) + n > stamp_limit_ || epoch_begin_.size() > epoch_limit_) compact_stamps();
  TORCH_CHECK(static_cast<uint64_t>(stamp_next_) + n < UINT32_MAX, "recis: ", n,
              " stamps do not fit the table's stamp clock; send smaller batches");
}

uint32_t HashTable::stamp_for(uint32_t step, bool may_compact) {
  if (epoch_step_.back() == step) return epoch_begin_.back();
  if (may_compact) ensure_stamps(1);
  if (epoch_step_.back() == step) return epoch_begin_.back();  // compaction may have made it the last
  push_epoch(stamp_next_, step);
  return stamp_next_++;
}

uint32_t HashTable::stamp_from(uint32_t step) const {
  const auto it = std::lower_bound(epoch_step_.begin(), epoch_step_.end(), step);
  return it == epoch_step_.end() ? UINT32_MAX : epoch_begin_[static_cast<size_t>(it - epoch_step_.begin())];
}

void HashTable::compact_stamps() {
  // Which epochs live slots still use, then their distinct steps in order: step k-th gets stamp k.
  const size_t E = epoch_begin_.size();
  auto epoch_of = [&](uint32_t stamp) {
    return static_cast<size_t>(std::upper_bound(epoch_begin_.begin(), epoch_begin_.end(), stamp) -
                               epoch_begin_.begin()) - 1;
  };
  std::vector<uint8_t> used(E, 0);
  for (const auto& m : maps_) m->for_each_slot([&](const IdMap::Slot& sl) { used[epoch_of(sl.stamp)] = 1; });
  std::vector<uint32_t> steps;
  for (size_t e = 0; e < E; ++e)
    if (used[e]) steps.push_back(epoch_step_[e]);
  std::sort(steps.begin(), steps.end());
  steps.erase(std::unique(steps.begin(), steps.end()), steps.end());
  std::vector<uint32_t> remap(E, 0);
  for (size_t e = 0; e < E; ++e)
    if (used[e])
      remap[e] = 1 + static_cast<uint32_t>(std::lower_bound(steps.begin(), steps.end(), epoch_step_[e]) - steps.begin());
  for (auto& m : maps_) {
    IdMap::Slot* slots = m->slot_data();
    at::parallel_for(0, static_cast<int64_t>(m->capacity()), 1 << 14, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        if (slots[i].row1) slots[i].stamp = remap[epoch_of(slots[i].stamp)];
    });
  }
  epoch_begin_.assign(1, 0);
  epoch_step_.assign(1, 0);
  for (size_t k = 0; k < steps.size(); ++k) {
    epoch_begin_.push_back(static_cast<uint32_t>(k + 1));
    epoch_step_.push_back(steps[k]);
  }
  stamp_next_ = static_cast<uint32_t>(steps.size() + 1);
  steps_sorted_ = true;
  epoch_limit_ = std::max<size_t>(size_t(1) << 20, 2 * epoch_begin_.size());
  ++compactions_;
}

void HashTable::resolve(const uint32_t* ns, const int64_t* ids, const uint32_t* counts, int64_t n, bool train,
                        int64_t* rows, bool admit_all, bool touch_hits, bool prefound) {
  // Without a capacity nothing can refuse the batch, so hits update their metadata while its
  // cache line is still hot from the find; otherwise only after room is made.
  const bool touch_now = train && touch_hits && !bounded();
  // A prefound lookup's dedup already stamped its hits (their last_seen); a plain resolve
  // stamps them here, with this step's stamp.
  const bool stamp_hits = train && touch_hits && !prefound;
  const uint32_t stamp = stamp_hits ? stamp_for(step_) : 0;
  static thread_local std::vector<IdMap::Slot*> slots_tls;
  std::vector<IdMap::Slot*>& slots = slots_tls;
  if (stamp_hits) slots.resize(n);
  auto touch = [&](int64_t i) {
    RowMeta* m = store_.meta(static_cast<uint32_t>(rows[i]));
    const uint64_t c = static_cast<uint64_t>(m->count) + counts[i];
    m->count = c > UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(c);
  };
  if (prefound) {
    if (touch_now)
      at::parallel_for(0, n, 4096, [&](int64_t b, int64_t e) {
        constexpr int64_t kAhead = 16;  // the hits' metadata lines are cold: prefetch them
        for (int64_t i = b; i < e; ++i) {
          if (i + kAhead < e && rows[i + kAhead] >= 0)
            __builtin_prefetch(store_.meta(static_cast<uint32_t>(rows[i + kAhead])), 1);
          if (rows[i] >= 0) touch(i);
        }
      });
  } else {
    at::parallel_for(0, n, 2048, [&](int64_t b, int64_t e) {
      constexpr int64_t kAhead = IdMap::kAhead;
      for (int64_t i = b; i < std::min(e, b + kAhead); ++i) maps_[ns[i]]->prefetch(ids[i]);
      for (int64_t i = b; i < e; ++i) {
        if (i + kAhead < e) maps_[ns[i + kAhead]]->prefetch(ids[i + kAhead]);
        IdMap::Slot* sl = maps_[ns[i]]->find_slot(ids[i]);
        rows[i] = sl ? static_cast<int64_t>(sl->row1) - 1 : IdMap::kMissing;
        if (stamp_hits) slots[i] = sl;
        if (touch_now && sl) {
          touch(i);
          sl->stamp = stamp;
        }
      }
    });
    probes_.key_hashes += n;
    probes_.map_probes += n;
  }
  if (!train) return;
  // Misses: admission decides who gets a row; room is made (or refused) before any change.
  std::vector<int64_t> admit;
  std::vector<uint64_t> incoming(maps_.size(), 0);
  const bool gated = sketch_.enabled() && !admit_all;
  for (int64_t i = 0; i < n; ++i) {
    if (rows[i] >= 0) continue;
    if (gated && sketch_.peek_add(ids[i], ns[i], counts[i]) < min_count_) continue;
    admit.push_back(i);
    ++incoming[ns[i]];
  }
  bool full = false;
  for (uint32_t s = 0; s < maps_.size(); ++s)
    full |= incoming[s] && capacity_[s] && maps_[s]->size() + incoming[s] > capacity_[s];
  if (full) {
    // Eviction moves slots (backward shift): the hits' slots are found again below.
    if (stamp_hits)
      for (int64_t i = 0; i < n; ++i) slots[i] = nullptr;
    // This batch's hits must survive the eviction that makes room for its new ids.
    std::vector<int64_t> hits;
    for (int64_t i = 0; i < n; ++i)
      if (rows[i] >= 0) hits.push_back(rows[i]);
    std::sort(hits.begin(), hits.end());
    for (uint32_t s = 0; s < maps_.size(); ++s)
      if (incoming[s]) make_room(s, incoming[s], hits);
  }
  if (touch_hits && !touch_now) {
    // Distinct keys own distinct rows, so hits update their metadata in parallel.
    at::parallel_for(0, n, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        if (rows[i] >= 0) {
          touch(i);
          if (stamp_hits) {
            IdMap::Slot* sl = slots[i] ? slots[i] : maps_[ns[i]]->find_slot(ids[i]);
            sl->stamp = stamp;
          }
        }
    });
  }
  if (gated)
    for (int64_t i = 0; i < n; ++i)
      if (rows[i] < 0) sketch_.add(ids[i], ns[i], counts[i]);
  insert_new(ns, ids, counts, admit, incoming, rows);
  for (int64_t i = 0; i < n; ++i) stats_.not_admitted += rows[i] < 0;
}

void HashTable::insert_new(const uint32_t* ns, const int64_t* ids, const uint32_t* counts,
                           const std::vector<int64_t>& which, const std::vector<uint64_t>& incoming, int64_t* rows) {
  if (which.empty()) return;
  const int64_t k_new = static_cast<int64_t>(which.size());
  static thread_local std::vector<uint32_t> fresh_tls;
  std::vector<uint32_t>& fresh = fresh_tls;
  fresh.resize(which.size());
  store_.allocate(k_new, fresh.data());
  for (uint32_t s = 0; s < maps_.size(); ++s)
    if (incoming[s]) maps_[s]->reserve(maps_[s]->size() + incoming[s]);
  // Initial values are a pure function of (seed, id), so rows are filled in parallel.
  const int64_t w = store_.slot_width();
  const uint32_t stamp = insert_stamp_ >= 0 ? static_cast<uint32_t>(insert_stamp_) : stamp_for(step_);
  at::parallel_for(0, k_new, 1024, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const int64_t i = which[k];
      const uint32_t r = fresh[k];
      RowMeta* m = store_.meta(r);
      m->count = counts[i];
      fill_initial(ns[i], ids[i], store_.emb(r));
      if (w) std::memcpy(store_.slots(r), slot_init_.data(), sizeof(float) * w);
      rows[i] = r;
    }
  });
  // Distinct absent ids claim distinct map slots (CAS), so they are mapped in parallel too; a
  // separate pass keeps the CAS from waiting on the row stores above.
  at::parallel_for(0, k_new, 4096, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      if (k + IdMap::kAhead < e) {
        const int64_t a = which[k + IdMap::kAhead];
        maps_[ns[a]]->prefetch(ids[a]);
      }
      const int64_t i = which[k];
      maps_[ns[i]]->place_absent_concurrent(ids[i], fresh[k], stamp);
    }
  });
  for (uint32_t s = 0; s < maps_.size(); ++s) maps_[s]->add_size(incoming[s]);
  stats_.inserts += which.size();
  probes_.key_hashes += which.size();
  probes_.map_probes += which.size();
}

void HashTable::find(uint32_t ns, const int64_t* ids, int64_t n, int64_t* rows) const {
  check_ns(ns);
  maps_[ns]->find_batch(ids, n, rows);
}

void HashTable::find_or_insert(uint32_t ns, const int64_t* ids, int64_t n, int64_t* rows) {
  check_ns(ns);
  // Reused across calls (no fresh pages per batch of inserts).
  static thread_local DedupResult uniq_tls;
  static thread_local std::vector<int32_t> inverse_tls;
  static thread_local std::vector<int64_t> urows_tls;
  // References, so that worker threads see this thread's buffers.
  DedupResult& uniq = uniq_tls;
  std::vector<int32_t>& inverse = inverse_tls;
  std::vector<int64_t>& urows = urows_tls;
  inverse.resize(n);
  const int64_t bounds[2] = {0, n};
  dedup_keys(ids, bounds, &ns, 1, inverse.data(), uniq);
  probes_.key_hashes += n;
  urows.resize(uniq.size());
  resolve(uniq.ns.data(), uniq.ids.data(), uniq.counts.data(), uniq.size(), true, urows.data(), true, false);
  at::parallel_for(0, n, 16384, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) rows[i] = urows[inverse[i]];
  });
}

int64_t HashTable::erase(uint32_t ns, const int64_t* ids, int64_t n) {
  check_ns(ns);
  const int64_t forwards = live_forwards();
  if (forwards || pending_.n) {
    // An erased row goes to the next new id: a gradient still on its way would land there.
    const uint32_t guard = protected_from();
    std::vector<int64_t> held;
    for (int64_t i = 0; i < n; ++i) {
      const IdMap::Slot* sl = maps_[ns]->find_slot(ids[i]);
      if (sl && last_seen_of(sl->stamp) >= guard) held.push_back(ids[i]);
    }
    if (!held.empty()) {
      std::ostringstream out;
      out << "recis: cannot erase " << held.size() << " ids of " << label(ns) << ", namely ";
      for (size_t i = 0; i < std::min<size_t>(held.size(), 5); ++i) out << (i ? ", " : "") << held[i];
      out << (held.size() > 5 ? ", ..." : "") << ": a gradient may still reach their rows, which would then "
          << "belong to other ids; nothing was erased. ";
      describe_holds(out, forwards, pending_.n);
      TORCH_CHECK(false, out.str());
    }
  }
  int64_t erased = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = maps_[ns]->erase(ids[i]);
    if (r >= 0) {
      store_.release(static_cast<uint32_t>(r));
      ++erased;
    }
  }
  return erased;
}

void HashTable::set_ttl(uint32_t ttl_steps, uint64_t interval_steps) {
  TORCH_CHECK_VALUE(ttl_steps == 0 || interval_steps > 0, "recis: ", label(0),
                    ": TTL eviction needs interval_steps >= 1, got ", interval_steps);
  ttl_steps_ = ttl_steps;
  ttl_interval_ = interval_steps;
}

void HashTable::advance_step() {
  if (ttl_steps_ > 0 && step_ > 0 && step_ % ttl_interval_ == 0) evict_ttl(ttl_steps_);
  ++step_;
}

int64_t HashTable::evict_ttl(uint32_t ttl_steps) {
  const uint32_t guard = protected_from();
  // guard <= step_, so a row older than the guard is expired iff last_seen < step_ - ttl_steps.
  if (step_ <= ttl_steps) return 0;
  const uint32_t before = std::min(guard, step_ - ttl_steps);  // expired: last_seen < before
  const SeenSince kept = seen_since(before);
  int64_t evicted = 0;
  for (uint32_t ns = 0; ns < maps_.size(); ++ns) {
    std::vector<int64_t> old;
    maps_[ns]->for_each_slot([&](const IdMap::Slot& sl) {
      if (!kept(sl.stamp)) old.push_back(sl.id);
    });
    for (int64_t id : old) drop_row(ns, id);
    evicted += static_cast<int64_t>(old.size());
  }
  stats_.evictions += evicted;
  return evicted;
}

void HashTable::export_ns(uint32_t ns, int64_t* ids, float* emb, float* slots, int64_t* counts,
                          int64_t* last_seen) const {
  check_ns(ns);
  const int64_t dim = store_.dim(), w = store_.slot_width();
  int64_t i = 0;
  maps_[ns]->for_each_slot([&](const IdMap::Slot& sl) {
    const uint32_t r = sl.row1 - 1;
    ids[i] = sl.id;
    counts[i] = store_.meta(r)->count;
    last_seen[i] = last_seen_of(sl.stamp);
    std::memcpy(emb + i * dim, store_.emb(r), sizeof(float) * dim);
    if (w) std::memcpy(slots + i * w, store_.slots(r), sizeof(float) * w);
    ++i;
  });
}

std::vector<SlotRef> HashTable::rows_since(uint32_t ns, uint32_t since) const {
  check_ns(ns);
  std::vector<SlotRef> out;
  // Steps in stamp order (the usual case): one stamp threshold; otherwise each stamp's step.
  const SeenSince selected = seen_since(since);
  maps_[ns]->for_each_slot([&](const IdMap::Slot& sl) {
    if (selected(sl.stamp))
      out.push_back({sl.id, sl.row1 - 1, sl.stamp});
  });
  return out;
}

void HashTable::export_rows(const std::vector<SlotRef>& sel, int64_t* ids, float* emb, float* slots,
                            int64_t* counts, int64_t* last_seen) const {
  const int64_t dim = store_.dim(), w = store_.slot_width(), n = static_cast<int64_t>(sel.size());
  at::parallel_for(0, n, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const uint32_t r = sel[i].row;
      ids[i] = sel[i].id;
      counts[i] = store_.meta(r)->count;
      last_seen[i] = last_seen_of(sel[i].stamp);
      std::memcpy(emb + i * dim, store_.emb(r), sizeof(float) * dim);
      if (w) std::memcpy(slots + i * w, store_.slots(r), sizeof(float) * w);
    }
  });
}

void HashTable::import_ns(uint32_t ns, int64_t n, const int64_t* ids, const float* emb, const float* slots,
                          const int64_t* counts, const int64_t* last_seen) {
  check_ns(ns);
  const int64_t dim = store_.dim(), w = store_.slot_width();
  {
    // Two entries for one id would leave whichever came last: refuse before any change.
    std::vector<int64_t> sorted(ids, ids + n);
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> dups;
    for (int64_t i = 1; i < n && dups.size() < 5; ++i)
      if (sorted[i] == sorted[i - 1] && (dups.empty() || dups.back() != sorted[i])) dups.push_back(sorted[i]);
    if (!dups.empty()) {
      std::ostringstream msg;
      msg << "recis: cannot load " << label(ns) << ": its state lists ids more than once (";
      for (size_t i = 0; i < dups.size(); ++i) msg << (i ? ", " : "") << dups[i];
      msg << (dups.size() == 5 ? ", ..." : "") << "); each id must appear once; nothing was loaded";
      TORCH_CHECK_VALUE(false, msg.str());
    }
  }
  std::vector<int64_t> rows(n);
  insert_stamp_ = 0;  // stamp 0 until the pass below writes each imported id's own stamp
  try {
    find_or_insert(ns, ids, n, rows.data());
  } catch (...) {
    insert_stamp_ = -1;
    throw;
  }
  insert_stamp_ = -1;
  // A stamp per distinct last_seen value, taken in increasing order (after the inserts: taking
  // stamps may compact the clock, which keeps only the stamps that slots hold).
  std::vector<uint32_t> values, stamps;
  auto value_of = [&](int64_t i) {
    return last_seen ? static_cast<uint32_t>(std::clamp<int64_t>(last_seen[i], 0, UINT32_MAX)) : step_;
  };
  if (last_seen) {
    values.resize(n);
    bool same = true;
    for (int64_t i = 0; i < n; ++i) {
      values[i] = value_of(i);
      same &= values[i] == values[0];
    }
    if (same) {
      values.resize(n ? 1 : 0);
    } else {
      std::sort(values.begin(), values.end());
      values.erase(std::unique(values.begin(), values.end()), values.end());
    }
  } else {
    values.assign(1, step_);
  }
  ensure_stamps(values.size());
  for (uint32_t v : values) stamps.push_back(stamp_for(v, false));  // no compaction between them
  at::parallel_for(0, n, 1024, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const uint32_t r = static_cast<uint32_t>(rows[i]);
      RowMeta* m = store_.meta(r);
      m->count = counts ? static_cast<uint32_t>(std::clamp<int64_t>(counts[i], 0, UINT32_MAX)) : 0;
      std::memcpy(store_.emb(r), emb + i * dim, sizeof(float) * dim);
      if (w && slots) std::memcpy(store_.slots(r), slots + i * w, sizeof(float) * w);
    }
  });
  // The stamps, in a pass of its own that prefetches the slots ahead (as the batched finds do).
  IdMap& map = *maps_[ns];
  const bool one = values.size() == 1;
  at::parallel_for(0, n, 4096, [&](int64_t b, int64_t e) {
    constexpr int64_t kAhead = IdMap::kAhead;
    for (int64_t i = b; i < std::min(e, b + kAhead); ++i) map.prefetch(ids[i]);
    for (int64_t i = b; i < e; ++i) {
      if (i + kAhead < e) map.prefetch(ids[i + kAhead]);
      const size_t k =
          one ? 0 : static_cast<size_t>(std::lower_bound(values.begin(), values.end(), value_of(i)) - values.begin());
      map.find_slot(ids[i])->stamp = stamps[k];
    }
  });
}

void HashTable::clear() {
  for (auto& m : maps_) m->clear();
  epoch_begin_.assign(1, 0);
  epoch_step_.assign(1, 0);
  stamp_next_ = 1;
  steps_sorted_ = true;
  store_.clear();
  pending_.clear();
  if (sketch_.enabled()) std::fill(sketch_.counts().begin(), sketch_.counts().end(), 0u);
}

size_t HashTable::memory_bytes() const {
  size_t total = store_.memory_bytes() + sketch_.memory_bytes() +
                 (epoch_begin_.capacity() + epoch_step_.capacity()) * sizeof(uint32_t);
  for (const auto& m : maps_) total += m->memory_bytes();
  return total;
}

}  // namespace recis

#include "ops/table_ops.h"

#include <Python.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <vector>

#include "hashtable/registry.h"
#include "ops/dedup.h"
#include "ops/op_checks.h"
#include "ops/pooling.h"
#include "optim/sparse_update.h"
#include "common/gil.h"
#include "common/storage_pool.h"

namespace recis {

void bump(const at::Tensor& token) {
  if (token.defined() && token.numel() > 0) token.add_(1);
}

// The lease ends when the storage is freed, i.e. when autograd releases the saved tensors (after
// backward, or when the graph of a forward that gets no backward is dropped). Compiled graphs
// save the same tensor, so this needs no Python and no extra op.
at::Tensor leased(const std::vector<std::shared_ptr<HashTable>>& tables, const at::Tensor& rows,
                  const std::vector<uint32_t>& steps) {
  auto* buf = new at::Tensor(rows);
  // Table t's unique rows: row t of a [T, n] tensor (or all of a 1-d one). Registered with the
  // lease, so that a backward handing them back is known to come from this forward.
  const int64_t n = rows.dim() == 2 ? rows.size(1) : rows.numel();
  const int64_t* base = rows.data_ptr<int64_t>();
  std::vector<std::pair<std::weak_ptr<HashTable>, uint32_t>> leases;
  for (size_t t = 0; t < tables.size(); ++t) leases.emplace_back(tables[t], steps[t]);
  at::Tensor out = at::from_blob(
      buf->data_ptr(), rows.sizes(),
      [buf, leases, base, n](void*) {
        // Leases end before the rows' memory goes.
        for (size_t t = 0; t < leases.size(); ++t)
          if (auto table = leases[t].first.lock()) table->release_forward(leases[t].second, base + t * n);
        delete buf;
      },
      at::TensorOptions().dtype(at::kLong));
  for (size_t t = 0; t < tables.size(); ++t) tables[t]->add_forward(steps[t], base + t * n, n);
  return out;
}

namespace {

constexpr int64_t kUnpooled = static_cast<int64_t>(Combiner::kNone);

// Lookup outputs reuse their storage across steps (a few of them: each can be tens of MB).
at::Tensor reusable_output(at::IntArrayRef shape) {
  static thread_local StoragePool pool(4);
  return pool.empty(shape, at::kFloat);
}

void bump_all(at::TensorList tokens) {
  for (const at::Tensor& t : tokens) bump(t);
}

// The tables of a list-taking op: distinct, with one token each (or no tokens at all).
std::vector<std::shared_ptr<HashTable>> tables_of(at::TensorList tokens, at::IntArrayRef handles) {
  const size_t T = handles.size();
  TORCH_CHECK_VALUE(T >= 1, "recis: a table op needs at least one table");
  TORCH_CHECK_VALUE(tokens.empty() || tokens.size() == T, "recis: ", tokens.size(), " tokens for ", T,
                    " tables; pass one token per table");
  std::vector<std::shared_ptr<HashTable>> out;
  out.reserve(T);
  for (size_t t = 0; t < T; ++t) {
    for (size_t s = 0; s < t; ++s)
      TORCH_CHECK_VALUE(handles[s] != handles[t], "recis: table handle ", handles[t], " appears twice in one call");
    out.push_back(table_from_handle(handles[t]));
  }
  return out;
}

// One table's share of a list-taking lookup op: its feature layout, combiner and output block.
struct TableLayout {
  at::IntArrayRef feature_ns, col_offsets;
  int64_t combiner;
  int64_t out_base;  // where its block starts in the flat output (0: the pooled block)
  int64_t out_cols;  // width of its rows in that block
};

// Checks the per-table layouts of a lookup op (feature_ns/col_offsets: F entries per table) and
// the pooled tables' columns; returns the end of the pooled block in the flat output.
int64_t table_layouts(at::IntArrayRef feature_ns, at::IntArrayRef col_offsets, int64_t batch, int64_t out_cols,
                      at::IntArrayRef combiners, const at::Tensor& offsets, const std::vector<int64_t>& dims,
                      std::vector<TableLayout>& out) {
  const int64_t T = static_cast<int64_t>(dims.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(combiners.size()) == T, "recis: ", combiners.size(), " combiners for ", T,
                    " tables; pass one per table");
  TORCH_CHECK_VALUE(!feature_ns.empty() && static_cast<int64_t>(feature_ns.size()) % T == 0,
                    "recis: feature_ns has ", feature_ns.size(), " entries; expected one per feature per table (",
                    T, " tables)");
  TORCH_CHECK_VALUE(col_offsets.size() == feature_ns.size(), "recis: col_offsets needs one entry per feature per table");
  TORCH_CHECK_VALUE(out_cols >= 0, "recis: out_cols must be >= 0, got ", out_cols);
  const int64_t F = static_cast<int64_t>(feature_ns.size()) / T;
  out.clear();
  const int64_t pooled_end = batch * out_cols;
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK_VALUE(combiners[t] >= 0 && combiners[t] <= static_cast<int64_t>(Combiner::kNone),
                      "recis: unknown combiner code ", combiners[t]);
    TableLayout L{feature_ns.slice(t * F, F), col_offsets.slice(t * F, F), combiners[t], 0, out_cols};
    check_layout(L.feature_ns, batch, L.col_offsets, offsets);
    if (combiners[t] == kUnpooled) {
      L.out_cols = dims[t];  // its [n, dim] block comes after the pooled one (place_unpooled)
    } else {
      for (int64_t f = 0; f < F; ++f)
        if (L.feature_ns[f] >= 0)
          TORCH_CHECK_VALUE(L.col_offsets[f] >= 0 && L.col_offsets[f] + dims[t] <= out_cols, "recis: feature ", f,
                            " of table ", t, " lands in columns [", L.col_offsets[f], ", ", L.col_offsets[f] + dims[t],
                            ") outside the ", out_cols, " output columns");
    }
    out.push_back(L);
  }
  return pooled_end;
}

// Places the unpooled tables' [n, dim] blocks after the pooled block; returns the total size.
int64_t place_unpooled(std::vector<TableLayout>& layouts, int64_t pooled_end, int64_t n) {
  int64_t end = pooled_end;
  for (TableLayout& L : layouts)
    if (L.combiner == kUnpooled) {
      L.out_base = end;
      end += n * L.out_cols;
    }
  return end;
}

// The lookup output's shape: [batch, out_cols] when every table is pooled, [n, dim] for one
// unpooled table alone, else flat (several blocks).
at::Tensor output_shape(const at::Tensor& out, const std::vector<TableLayout>& layouts, int64_t batch,
                        int64_t out_cols, int64_t n) {
  int64_t unpooled = 0;
  for (const TableLayout& L : layouts) unpooled += L.combiner == kUnpooled;
  if (unpooled == 0) return out.view({batch, out_cols});
  if (unpooled == 1 && layouts.size() == 1 && batch * out_cols == 0) return out.view({n, layouts[0].out_cols});
  return out;
}

// Runs body(t) for every table: in parallel over tables when there are at least as many tables
// as threads (each table's kernels then run single-threaded), else one table after the other
// (each table's kernels use the threads).
template <class F>
void for_each_table(int64_t T, F&& body) {
  if (T > 1 && at::get_num_threads() > 1 && T >= at::get_num_threads()) {
    at::parallel_for(0, T, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) body(t);
    });
  } else {
    for (int64_t t = 0; t < T; ++t) body(t);
  }
}

// The number of unique rows of one table's backward: the largest inverse index + 1.
int64_t unique_count(const int32_t* inv, int64_t n) {
  int64_t u = 0;
  for (int64_t i = 0; i < n; ++i) u = std::max<int64_t>(u, inv[i] + 1);
  return u;
}

// One table's forward: dedup its features' values, resolve them to rows (inserting in
// training), pool its rows into its output block. Runs under the table's lock, without the GIL.
void forward_one(HashTable& table, const TableLayout& TL, const at::Tensor& values, const at::Tensor& offsets,
                 const float* w, int64_t batch, int64_t num_bags, bool train, int64_t* rows, int32_t* inv,
                 float* out) {
  std::lock_guard<std::mutex> lock(table.mu);
  const int64_t n = values.size(0), dim = table.dim();
  const int64_t* off = offsets.data_ptr<int64_t>();
  std::vector<int64_t> seg_begin;
  std::vector<uint32_t> seg_ns;
  dedup_segments(off, TL.feature_ns, batch, inv, seg_begin, seg_ns);
  const uint32_t step_before = table.step();
  // The step's TTL sweep runs first, so the probe below sees the rows that survive it.
  if (train) table.advance_step();
  // One pass dedups the values and probes the id maps (dedup_probe: contiguous segments
  // [seg_begin[2s], seg_begin[2s + 1]) per segment); resolve then only handles the misses.
  static thread_local DedupResult uniq;
  table.dedup_probe(values.data_ptr<int64_t>(), seg_begin.data(), seg_ns.data(), static_cast<int64_t>(seg_ns.size()),
                    inv, uniq, train);
  const int64_t U = uniq.size();
  std::copy(uniq.rows.begin(), uniq.rows.end(), rows);
  try {
    table.resolve(uniq.ns.data(), uniq.ids.data(), uniq.counts.data(), U, train, rows, false, true, true);
  } catch (...) {
    table.undo_probe(uniq);  // a refused batch leaves no trace
    table.set_step(step_before);
    throw;
  }
  // Sized by the batch, not by the number of unique ids, so shapes stay static for
  // torch.compile; entries past the unique count are -1.
  std::fill(rows + U, rows + n, int64_t(-1));

  // A row pointer per unique key; keys without a row read zeros or their initial value.
  static thread_local std::vector<const float*> ptrs;
  static thread_local std::vector<float> fallback;
  ptrs.resize(U);
  int64_t missing = 0;
  for (int64_t u = 0; u < U; ++u) missing += rows[u] < 0;
  const bool init_missing = table.missing() == MissingMode::kInit;
  fallback.assign(init_missing ? missing * dim : dim, 0.f);
  int64_t m = 0;
  for (int64_t u = 0; u < U; ++u) {
    if (rows[u] >= 0) {
      ptrs[u] = table.store().emb(static_cast<uint32_t>(rows[u]));
    } else if (init_missing) {
      float* dst = fallback.data() + (m++) * dim;
      table.fill_initial(uniq.ns[u], uniq.ids[u], dst);
      ptrs[u] = dst;
    } else {
      ptrs[u] = fallback.data();
    }
  }
  const BagLayout L = make_layout(offsets, num_bags, batch, TL.feature_ns, TL.col_offsets, TL.out_cols, TL.combiner, w);
  pooled_forward(L, ptrs.data(), inv, dim, out + TL.out_base);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> lookup_forward(at::TensorList tokens, at::IntArrayRef handles,
                                                              const at::Tensor& values_in, const at::Tensor& offsets_in,
                                                              const c10::optional<at::Tensor>& weights,
                                                              at::IntArrayRef feature_ns, int64_t batch,
                                                              at::IntArrayRef col_offsets, int64_t out_cols,
                                                              at::IntArrayRef combiners, int64_t mode) {
  check_ids(values_in, "values");
  check_ids(offsets_in, "offsets");
  TORCH_CHECK_VALUE(mode >= 0 && mode <= static_cast<int64_t>(LookupMode::kTrainWithGrad), "recis: unknown lookup mode ",
                    mode);
  const bool train = mode != static_cast<int64_t>(LookupMode::kEval);
  const auto tables = tables_of(tokens, handles);
  const int64_t T = static_cast<int64_t>(tables.size());
  std::vector<int64_t> dims;
  for (const auto& t : tables) dims.push_back(t->dim());
  std::vector<TableLayout> layouts;
  const int64_t pooled_end = table_layouts(feature_ns, col_offsets, batch, out_cols, combiners, offsets_in, dims,
                                           layouts);
  const int64_t num_bags = (offsets_in.size(0) - 1);
  const at::Tensor values = values_in.contiguous(), offsets = offsets_in.contiguous();
  const int64_t n = values.size(0);
  TORCH_CHECK_VALUE(n < (int64_t(1) << 31), "recis: at most 2^31 - 1 values per call");
  const float* w = optional_weights(weights, n);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t ns : layouts[t].feature_ns)
      if (ns >= 0) tables[t]->check_ns(static_cast<uint32_t>(ns));
  check_offsets(offsets.data_ptr<int64_t>(), num_bags, n);
  const int64_t total = place_unpooled(layouts, pooled_end, n);

  at::Tensor inverse = at::empty({T, n}, at::TensorOptions().dtype(at::kInt));
  at::Tensor out = reusable_output({total});
  at::Tensor unique_rows = at::empty({T, n}, at::TensorOptions().dtype(at::kLong));
  {
    GilRelease nogil;
    // The pooled block is written column by column by its tables; columns no table writes are 0.
    int64_t covered = 0;
    for (int64_t t = 0; t < T; ++t)
      if (layouts[t].combiner != kUnpooled)
        for (int64_t ns : layouts[t].feature_ns) covered += ns >= 0 ? dims[t] : 0;
    if (covered != out_cols) std::fill(out.data_ptr<float>(), out.data_ptr<float>() + pooled_end, 0.f);
    for_each_table(T, [&](int64_t t) {
      forward_one(*tables[t], layouts[t], values, offsets, w, batch, num_bags, train,
                  unique_rows.data_ptr<int64_t>() + t * n, inverse.data_ptr<int32_t>() + t * n,
                  out.data_ptr<float>());
    });
  }
  if (mode == static_cast<int64_t>(LookupMode::kTrainWithGrad)) {
    std::vector<uint32_t> steps;
    for (const auto& t : tables) steps.push_back(t->step());
    unique_rows = leased(tables, unique_rows, steps);
  }
  bump_all(tokens);
  return {output_shape(out, layouts, batch, out_cols, n), unique_rows, inverse};
}

namespace {

// What both backward ops need, per table: checked inputs and the bag layouts.
struct BackwardCall {
  std::vector<std::shared_ptr<HashTable>> tables;
  std::vector<TableLayout> layouts;
  at::Tensor grad_out, offsets;
  const float* weights;
  int64_t n, num_bags;
};

BackwardCall backward_call(at::TensorList tokens, at::IntArrayRef handles, const at::Tensor& grad_out,
                           const at::Tensor& offsets, const c10::optional<at::Tensor>& weights,
                           const at::Tensor& unique_rows, const at::Tensor& inverse, at::IntArrayRef feature_ns,
                           int64_t batch, at::IntArrayRef col_offsets, int64_t out_cols, at::IntArrayRef combiners) {
  check_cpu(grad_out, "the output gradient");
  TORCH_CHECK_TYPE(grad_out.scalar_type() == at::kFloat, "recis: output gradient must be float32, got ",
                   grad_out.scalar_type());
  BackwardCall c;
  c.tables = tables_of(tokens, handles);
  const int64_t T = static_cast<int64_t>(c.tables.size());
  std::vector<int64_t> dims;
  for (const auto& t : c.tables) dims.push_back(t->dim());
  const int64_t pooled_end = table_layouts(feature_ns, col_offsets, batch, out_cols, combiners, offsets, dims,
                                           c.layouts);
  TORCH_CHECK_VALUE(inverse.dim() == 2 && inverse.size(0) == T && inverse.scalar_type() == at::kInt,
                    "recis: inverse must be int32 [", T, ", n], got ", inverse.scalar_type(), " ", inverse.sizes());
  TORCH_CHECK_VALUE(unique_rows.sizes() == inverse.sizes() && unique_rows.scalar_type() == at::kLong,
                    "recis: unique_rows must be int64 with the shape of inverse ", inverse.sizes(), ", got ",
                    unique_rows.sizes());
  c.n = inverse.size(1);
  const int64_t total = place_unpooled(c.layouts, pooled_end, c.n);
  TORCH_CHECK_VALUE(grad_out.numel() == total, "recis: the output gradient has ", grad_out.numel(),
                    " elements; the lookup's output had ", total);
  c.grad_out = grad_out.contiguous();
  c.offsets = offsets.contiguous();
  c.weights = optional_weights(weights, c.n);
  c.num_bags = c.offsets.size(0) - 1;
  return c;
}

}  // namespace

void lookup_backward(at::TensorList tokens, at::IntArrayRef handles, const at::Tensor& grad_out,
                     const at::Tensor& offsets, const c10::optional<at::Tensor>& weights,
                     const at::Tensor& unique_rows_in, const at::Tensor& inverse_in, at::IntArrayRef feature_ns,
                     int64_t batch, at::IntArrayRef col_offsets, int64_t out_cols, at::IntArrayRef combiners) {
  const BackwardCall c = backward_call(tokens, handles, grad_out, offsets, weights, unique_rows_in, inverse_in,
                                       feature_ns, batch, col_offsets, out_cols, combiners);
  const at::Tensor unique_rows = unique_rows_in.contiguous(), inverse = inverse_in.contiguous();
  {
    GilRelease nogil;
    for_each_table(static_cast<int64_t>(c.tables.size()), [&](int64_t t) {
      HashTable& table = *c.tables[t];
      const int32_t* inv = inverse.data_ptr<int32_t>() + t * c.n;
      const int64_t U = unique_count(inv, c.n), dim = table.dim();
      std::lock_guard<std::mutex> lock(table.mu);
      // Without a sparse optimizer the table is not trained: its gradients have nowhere to go
      // (they would pile up and hold their rows forever), so backward keeps none.
      if (!table.keep_grads()) return;
      uint8_t* finite = nullptr;
      float* grads = table.append_pending(unique_rows.data_ptr<int64_t>() + t * c.n, U, &finite);
      const TableLayout& TL = c.layouts[t];
      const BagLayout L = make_layout(c.offsets, c.num_bags, batch, TL.feature_ns, TL.col_offsets, TL.out_cols,
                                      TL.combiner, c.weights);
      unique_row_grads(L, c.grad_out.data_ptr<float>() + TL.out_base, inv, c.n, U, dim, grads, finite);
    });
  }
  bump_all(tokens);
}

at::Tensor lookup_backward_apply(at::TensorList tokens, at::IntArrayRef handles, const at::Tensor& grad_out,
                                 const at::Tensor& offsets, const c10::optional<at::Tensor>& weights,
                                 const at::Tensor& unique_rows_in, const at::Tensor& inverse_in,
                                 at::IntArrayRef feature_ns, int64_t batch, at::IntArrayRef col_offsets,
                                 int64_t out_cols, at::IntArrayRef combiners, at::IntArrayRef kinds,
                                 at::ArrayRef<double> hyper_in) {
  const BackwardCall c = backward_call(tokens, handles, grad_out, offsets, weights, unique_rows_in, inverse_in,
                                       feature_ns, batch, col_offsets, out_cols, combiners);
  const int64_t T = static_cast<int64_t>(c.tables.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(kinds.size()) == T, "recis: ", kinds.size(), " optimizer kinds for ", T,
                    " tables; pass one per table");
  // Each table's hyperparameters and update rule, checked before any row changes.
  std::vector<RowRule> rules;
  size_t at = 0;
  for (int64_t t = 0; t < T; ++t) {
    const OptimKind kind = static_cast<OptimKind>(kinds[t]);
    const size_t k = hyper_size_for(kind);
    TORCH_CHECK_VALUE(at + k <= hyper_in.size(), "recis: hyper has ", hyper_in.size(),
                      " entries, too few for the optimizer kinds ", kinds);
    const std::vector<double> hyper(hyper_in.begin() + at, hyper_in.begin() + at + k);
    at += k;
    RowStore& store = c.tables[t]->store();
    rules.push_back(make_row_rule(kind, hyper, store.slot_width(), store.dim()));
  }
  TORCH_CHECK_VALUE(at == hyper_in.size(), "recis: hyper has ", hyper_in.size(), " entries; the optimizer kinds ",
                    kinds, " take ", at);
  const at::Tensor unique_rows = unique_rows_in.contiguous(), inverse = inverse_in.contiguous();
  at::Tensor result = at::zeros({T, 2}, at::TensorOptions().dtype(at::kLong));
  int64_t* res = result.data_ptr<int64_t>();
  {
    GilRelease nogil;
    for_each_table(T, [&](int64_t t) {
      HashTable& table = *c.tables[t];
      const int32_t* inv = inverse.data_ptr<int32_t>() + t * c.n;
      const int64_t* rows = unique_rows.data_ptr<int64_t>() + t * c.n;
      const int64_t U = unique_count(inv, c.n);
      int64_t with_row = 0;
      for (int64_t u = 0; u < U; ++u) with_row += rows[u] >= 0;
      std::atomic<int64_t> nonfinite{0};  // rare: touched only for rows with NaN/Inf gradients
      std::lock_guard<std::mutex> lock(table.mu);
      TORCH_CHECK(table.pending().n == 0, "recis: fused backward with gradients still pending; call step() first");
      RowStore& store = table.store();
      const RowRule& rule = rules[t];
      const TableLayout& TL = c.layouts[t];
      const BagLayout L = make_layout(c.offsets, c.num_bags, batch, TL.feature_ns, TL.col_offsets, TL.out_cols,
                                      TL.combiner, c.weights);
      // Each unique row's gradient is summed and applied at once: no gradient buffer. A row
      // whose gradient is not finite is left untouched and counted.
      for_each_unique_grad(
          L, c.grad_out.data_ptr<float>() + TL.out_base, inv, c.n, U, store.dim(),
          [&](int64_t u, const float* g, bool finite) {
            if (rows[u] < 0) return;
            if (!finite) {
              ++nonfinite;
              return;
            }
            const uint32_t r = static_cast<uint32_t>(rows[u]);
            rule(store.emb(r), store.slots(r), g, store.dim());
          },
          [&](int64_t u) {
            if (rows[u] >= 0) prefetch_for_update(store, static_cast<uint32_t>(rows[u]));
          });
      res[2 * t] = with_row - nonfinite.load();
      res[2 * t + 1] = nonfinite.load();
    });
  }
  bump_all(tokens);
  return result;
}

at::Tensor apply_update(at::Tensor& token, int64_t handle, int64_t kind, at::ArrayRef<double> hyper_in,
                        bool skip_nonfinite) {
  auto table = table_from_handle(handle);
  const std::vector<double> hyper(hyper_in.begin(), hyper_in.end());
  int64_t applied = 0, nonfinite = 0;
  {
    GilRelease nogil;
    std::lock_guard<std::mutex> lock(table->mu);
    PendingGrads& pg = table->pending();
    pg.merge_duplicates(table->dim());
    for (int64_t i = 0; i < pg.n; ++i) {
      if (pg.rows[i] < 0) continue;
      pg.finite[i] ? ++applied : ++nonfinite;
    }
    if (nonfinite && !skip_nonfinite) {
      applied = 0;  // leave every row untouched
    } else if (pg.n) {
      apply_sparse_update(table->store(), static_cast<OptimKind>(kind), hyper, pg.rows.data(), pg.grads.data(),
                          pg.finite.data(), pg.n);
    }
    table->clear_pending();
  }
  bump(token);
  return at::tensor({applied, nonfinite}, at::TensorOptions().dtype(at::kLong));
}

void clear_pending(at::TensorList tokens, at::IntArrayRef handles) {
  for (const auto& table : tables_of(tokens, handles)) {
    std::lock_guard<std::mutex> lock(table->mu);
    table->clear_pending();
  }
  bump_all(tokens);
}

// Runs f(table, ns, ids, n, rows) on a checked id tensor under the table's lock, without the GIL.
template <class F>
at::Tensor rows_of_ids(int64_t handle, int64_t ns, const at::Tensor& ids_in, F&& f) {
  check_ids(ids_in, "ids");
  const at::Tensor ids = ids_in.contiguous();
  auto table = table_from_handle(handle);
  at::Tensor rows = at::empty({ids.size(0)}, at::TensorOptions().dtype(at::kLong));
  GilRelease nogil;
  std::lock_guard<std::mutex> lock(table->mu);
  table->check_ns(static_cast<uint32_t>(ns));
  f(*table, static_cast<uint32_t>(ns), ids.data_ptr<int64_t>(), ids.size(0), rows.data_ptr<int64_t>());
  return rows;
}

at::Tensor find(int64_t handle, int64_t ns, const at::Tensor& ids) {
  return rows_of_ids(handle, ns, ids, [](HashTable& t, uint32_t s, const int64_t* v, int64_t n, int64_t* r) {
    t.find(s, v, n, r);
  });
}

at::Tensor find_or_insert(at::Tensor& token, int64_t handle, int64_t ns, const at::Tensor& ids) {
  at::Tensor rows = rows_of_ids(handle, ns, ids, [](HashTable& t, uint32_t s, const int64_t* v, int64_t n,
                                                    int64_t* r) { t.find_or_insert(s, v, n, r); });
  bump(token);
  return rows;
}

c10::SymInt erase(at::Tensor& token, int64_t handle, int64_t ns, const at::Tensor& ids_in) {
  check_ids(ids_in, "ids");
  const at::Tensor ids = ids_in.contiguous();
  auto table = table_from_handle(handle);
  int64_t erased;
  {
    GilRelease nogil;
    std::lock_guard<std::mutex> lock(table->mu);
    erased = table->erase(static_cast<uint32_t>(ns), ids.data_ptr<int64_t>(), ids.size(0));
  }
  bump(token);
  return erased;
}

at::Tensor gather(int64_t handle, const at::Tensor& rows_in) {
  check_ids(rows_in, "rows");
  const at::Tensor rows = rows_in.contiguous();
  auto table = table_from_handle(handle);
  const int64_t n = rows.size(0), dim = table->dim();
  at::Tensor out = at::zeros({n, dim}, at::TensorOptions().dtype(at::kFloat));
  std::lock_guard<std::mutex> lock(table->mu);
  const int64_t* r = rows.data_ptr<int64_t>();
  float* o = out.data_ptr<float>();
  const uint32_t hw = table->store().high_water();
  for (int64_t i = 0; i < n; ++i) {
    if (r[i] < 0) continue;
    TORCH_CHECK_INDEX(r[i] < hw, "recis: row ", r[i], " out of range");
    std::memcpy(o + i * dim, table->store().emb(static_cast<uint32_t>(r[i])), sizeof(float) * dim);
  }
  return out;
}

}  // namespace recis

#include "ops/table_ops.h"

#include <Python.h>
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
namespace {

// Lookup outputs reuse their storage across steps (a few of them: each can be tens of MB).
at::Tensor reusable_output(at::IntArrayRef shape) {
  static thread_local StoragePool pool(4);
  return pool.empty(shape, at::kFloat);
}

// What both backward ops need: checked inputs, the bag layout and the number of unique rows
// (the largest inverse index + 1; unique_rows past it holds -1).
struct BackwardInputs {
  at::Tensor grad_out, offsets;
  const float* weights;
  int64_t n, n_unique;
};

BackwardInputs backward_inputs(const at::Tensor& grad_out, const at::Tensor& offsets,
                               const c10::optional<at::Tensor>& weights, const at::Tensor& unique_rows,
                               const at::Tensor& inverse) {
  check_cpu(grad_out, "the output gradient");
  TORCH_CHECK_TYPE(grad_out.scalar_type() == at::kFloat, "recis: output gradient must be float32, got ",
                   grad_out.scalar_type());
  const int64_t n = inverse.size(0);
  TORCH_CHECK_VALUE(unique_rows.size(0) == n, "recis: unique_rows must have one slot per value");
  const int32_t* inv = inverse.data_ptr<int32_t>();
  int64_t n_unique = 0;
  for (int64_t i = 0; i < n; ++i) n_unique = std::max<int64_t>(n_unique, inv[i] + 1);
  return {grad_out.contiguous(), offsets.contiguous(), optional_weights(weights, n), n, n_unique};
}

}  // namespace

void bump(at::Tensor& token) {
  if (token.defined() && token.numel() > 0) token.add_(1);
}

// The unique_rows output of a training forward that expects a backward. Its storage carries
// the forward's lease on the table (HashTable::add_forward): the lease ends when the storage
// is freed, i.e. when autograd releases the saved tensors (after backward, or when the graph
// of a forward that gets no backward is dropped). Compiled graphs save the same tensor, so
// this needs no Python and no extra op.
at::Tensor leased(const std::shared_ptr<HashTable>& table, const at::Tensor& rows, uint32_t step) {
  auto* buf = new at::Tensor(rows);
  std::weak_ptr<HashTable> weak = table;
  at::Tensor out = at::from_blob(
      buf->data_ptr(), rows.sizes(),
      [buf, weak, step](void*) {
        delete buf;
        if (auto t = weak.lock()) t->release_forward(step);
      },
      at::TensorOptions().dtype(at::kLong));
  table->add_forward(step);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lookup_forward(at::Tensor& token, int64_t handle, const at::Tensor& values_in,
                                                              const at::Tensor& offsets_in,
                                                              const c10::optional<at::Tensor>& weights,
                                                              at::IntArrayRef feature_ns, int64_t batch,
                                                              at::IntArrayRef col_offsets, int64_t out_cols,
                                                              int64_t combiner, int64_t mode) {
  check_ids(values_in, "values");
  check_ids(offsets_in, "offsets");
  TORCH_CHECK_VALUE(combiner >= 0 && combiner <= static_cast<int64_t>(Combiner::kNone), "recis: unknown combiner code ",
                    combiner);
  TORCH_CHECK_VALUE(mode >= 0 && mode <= static_cast<int64_t>(LookupMode::kTrainWithGrad), "recis: unknown lookup mode ",
                    mode);
  const bool train = mode != static_cast<int64_t>(LookupMode::kEval);
  const int64_t F = static_cast<int64_t>(feature_ns.size());
  const int64_t num_bags = check_layout(feature_ns, batch, col_offsets, offsets_in);
  const at::Tensor values = values_in.contiguous(), offsets = offsets_in.contiguous();
  const int64_t n = values.size(0);
  TORCH_CHECK_VALUE(n < (int64_t(1) << 31), "recis: at most 2^31 - 1 values per call");
  const float* w = optional_weights(weights, n);
  auto table = table_from_handle(handle);
  const int64_t dim = table->dim();
  for (int64_t f = 0; f < F; ++f)
    if (feature_ns[f] >= 0) table->check_ns(static_cast<uint32_t>(feature_ns[f]));

  at::Tensor inverse = at::empty({n}, at::TensorOptions().dtype(at::kInt));
  at::Tensor out = combiner == static_cast<int64_t>(Combiner::kNone) ? reusable_output({n, dim}) : reusable_output({batch, out_cols});
  at::Tensor unique_rows;
  {
    GilRelease nogil;
    std::lock_guard<std::mutex> lock(table->mu);
    const int64_t* off = offsets.data_ptr<int64_t>();
    check_offsets(off, num_bags, n);
    std::vector<int64_t> seg_begin;
    std::vector<uint32_t> seg_ns;
    int32_t* inv = inverse.data_ptr<int32_t>();
    dedup_segments(off, feature_ns, batch, inv, seg_begin, seg_ns);
    // dedup_keys takes contiguous segments: [seg_begin[2s], seg_begin[2s + 1]) per segment.
    static thread_local DedupResult uniq;
    dedup_keys(values.data_ptr<int64_t>(), seg_begin.data(), seg_ns.data(), static_cast<int64_t>(seg_ns.size()), inv,
               uniq);
    const int64_t U = uniq.size();
    // Sized by the batch, not by the number of unique ids, so shapes stay static for
    // torch.compile; entries past the unique count are -1.
    unique_rows = at::empty({n}, at::TensorOptions().dtype(at::kLong));
    int64_t* rows = unique_rows.data_ptr<int64_t>();
    const uint32_t step_before = table->step();
    if (train) table->advance_step();
    try {
      table->resolve(uniq.ns.data(), uniq.ids.data(), uniq.counts.data(), U, train, rows);
    } catch (...) {
      table->set_step(step_before);  // a refused batch leaves no trace
      throw;
    }
    if (mode == static_cast<int64_t>(LookupMode::kTrainWithGrad)) unique_rows = leased(table, unique_rows, table->step());
    std::fill(rows + U, rows + n, int64_t(-1));

    // A row pointer per unique key; keys without a row read zeros or their initial value.
    static thread_local std::vector<const float*> ptrs;
    static thread_local std::vector<float> fallback;
    ptrs.resize(U);
    int64_t missing = 0;
    for (int64_t u = 0; u < U; ++u) missing += rows[u] < 0;
    const bool init_missing = table->missing() == MissingMode::kInit;
    fallback.assign(init_missing ? missing * dim : dim, 0.f);
    int64_t m = 0;
    for (int64_t u = 0; u < U; ++u) {
      if (rows[u] >= 0) {
        ptrs[u] = table->store().emb(static_cast<uint32_t>(rows[u]));
      } else if (init_missing) {
        float* dst = fallback.data() + (m++) * dim;
        table->fill_initial(uniq.ns[u], uniq.ids[u], dst);
        ptrs[u] = dst;
      } else {
        ptrs[u] = fallback.data();
      }
    }
    const BagLayout L = make_layout(offsets, num_bags, batch, feature_ns, col_offsets, out_cols, combiner, w);
    pooled_forward(L, ptrs.data(), inverse.data_ptr<int32_t>(), dim, out.data_ptr<float>());
  }
  bump(token);
  return {out, unique_rows, inverse};
}

void lookup_backward(at::Tensor& token, int64_t handle, const at::Tensor& grad_out, const at::Tensor& offsets,
                     const c10::optional<at::Tensor>& weights, const at::Tensor& unique_rows, const at::Tensor& inverse,
                     at::IntArrayRef feature_ns, int64_t batch, at::IntArrayRef col_offsets, int64_t combiner) {
  const BackwardInputs in = backward_inputs(grad_out, offsets, weights, unique_rows, inverse);
  auto table = table_from_handle(handle);
  const int64_t dim = table->dim(), U = in.n_unique;
  {
    GilRelease nogil;
    std::lock_guard<std::mutex> lock(table->mu);
    // Without a sparse optimizer the table is not trained: its gradients have nowhere to go
    // (they would pile up and hold their rows forever), so backward keeps none.
    if (table->keep_grads()) {
      uint8_t* finite = nullptr;
      float* grads = table->append_pending(unique_rows.data_ptr<int64_t>(), U, &finite);
      const BagLayout L = make_layout(in.offsets, in.offsets.size(0) - 1, batch, feature_ns, col_offsets,
                                      in.grad_out.size(-1), combiner, in.weights);
      unique_row_grads(L, in.grad_out.data_ptr<float>(), inverse.data_ptr<int32_t>(), in.n, U, dim, grads, finite);
    }
  }
  bump(token);
}

at::Tensor lookup_backward_apply(at::Tensor& token, int64_t handle, const at::Tensor& grad_out,
                                 const at::Tensor& offsets, const c10::optional<at::Tensor>& weights,
                                 const at::Tensor& unique_rows, const at::Tensor& inverse, at::IntArrayRef feature_ns,
                                 int64_t batch, at::IntArrayRef col_offsets, int64_t combiner, int64_t kind,
                                 at::ArrayRef<double> hyper_in) {
  const BackwardInputs in = backward_inputs(grad_out, offsets, weights, unique_rows, inverse);
  const std::vector<double> hyper(hyper_in.begin(), hyper_in.end());
  auto table = table_from_handle(handle);
  const int64_t* rows = unique_rows.data_ptr<int64_t>();
  int64_t with_row = 0;
  for (int64_t u = 0; u < in.n_unique; ++u) with_row += rows[u] >= 0;
  std::atomic<int64_t> nonfinite{0};  // rare: touched only for rows with NaN/Inf gradients
  {
    GilRelease nogil;
    std::lock_guard<std::mutex> lock(table->mu);
    TORCH_CHECK(table->pending().n == 0, "recis: fused backward with gradients still pending; call step() first");
    RowStore& store = table->store();
    const RowRule rule = make_row_rule(static_cast<OptimKind>(kind), hyper, store.slot_width(), store.dim());
    const BagLayout L = make_layout(in.offsets, in.offsets.size(0) - 1, batch, feature_ns, col_offsets,
                                    in.grad_out.size(-1), combiner, in.weights);
    // Each unique row's gradient is summed and applied at once: no gradient buffer. A row
    // whose gradient is not finite is left untouched and counted.
    for_each_unique_grad(
        L, in.grad_out.data_ptr<float>(), inverse.data_ptr<int32_t>(), in.n, in.n_unique, store.dim(),
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
  }
  bump(token);
  const int64_t bad = nonfinite.load();
  return at::tensor({with_row - bad, bad}, at::TensorOptions().dtype(at::kLong));
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

void clear_pending(at::Tensor& token, int64_t handle) {
  auto table = table_from_handle(handle);
  std::lock_guard<std::mutex> lock(table->mu);
  table->clear_pending();
  bump(token);
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

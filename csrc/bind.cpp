// recis._C: the torch op library `recis` (schemas + CPU kernels) and the HashTable class.
#include <torch/extension.h>

#include "common/hashing.h"
#include "features/hash_ops.h"
#include "features/jagged_ops.h"
#include "features/value_ops.h"
#include "hashtable/hash_table.h"
#include "hashtable/registry.h"
#include "ops/pooling.h"
#include "ops/resolve_op.h"
#include "ops/row_pool_ops.h"
#include "ops/table_ops.h"
#include "optim/sparse_update.h"

namespace py = pybind11;

TORCH_LIBRARY(recis, m) {
  // The lookup ops take a list of tables (see ops/table_ops.h): one call per collection step.
  m.def(
      "lookup_forward(Tensor(a!)[] tokens, int[] tables, Tensor values, Tensor offsets, Tensor? weights, "
      "int[] feature_ns, int batch_size, int[] col_offsets, int out_cols, int[] combiners, int lookup_mode) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "lookup_backward(Tensor(a!)[] tokens, int[] tables, Tensor grad_out, Tensor offsets, Tensor? weights, "
      "Tensor unique_rows, Tensor inverse, int[] feature_ns, int batch_size, int[] col_offsets, int out_cols, "
      "int[] combiners) -> ()");
  m.def(
      "lookup_backward_apply(Tensor(a!)[] tokens, int[] tables, Tensor grad_out, Tensor offsets, Tensor? weights, "
      "Tensor unique_rows, Tensor inverse, int[] feature_ns, int batch_size, int[] col_offsets, int out_cols, "
      "int[] combiners, int[] kinds, float[] hyper) -> Tensor");
  m.def("apply_update(Tensor(a!) token, int table, int kind, float[] hyper, bool skip_nonfinite) -> Tensor");
  m.def("clear_pending(Tensor(a!)[] tokens, int[] tables) -> ()");
  m.def("find(int table, int ns, Tensor ids) -> Tensor");
  m.def("find_or_insert(Tensor(a!) token, int table, int ns, Tensor ids) -> Tensor");
  m.def("erase(Tensor(a!) token, int table, int ns, Tensor ids) -> SymInt");
  m.def("gather(int table, Tensor rows) -> Tensor");
  // Rows of distinct (ns, id) keys, each counted `counts` times (admission, LFU), as a lookup.
  m.def("resolve(Tensor(a!) token, int table, Tensor ns, Tensor ids, Tensor counts, int lookup_mode) -> Tensor");
  m.def("dedup_jagged(Tensor values, Tensor offsets, int[] feature_ns, int batch) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("pool_rows(Tensor rows, Tensor inverse, Tensor offsets, Tensor? weights, int[] feature_ns, int batch, "
        "int[] col_offsets, int out_cols, int combiner) -> Tensor");
  m.def("pool_rows_backward(Tensor grad_out, Tensor inverse, Tensor offsets, Tensor? weights, int[] feature_ns, "
        "int batch, int[] col_offsets, int out_cols, int combiner, int n_rows, int dim) -> Tensor");
  // Feature engine (recis.features): each op runs over a list of columns in one call.
  m.def("feat_hash_str(Tensor[] offsets, Tensor[] data, Tensor?[] index, Tensor?[] mask, int[] seeds, "
        "int[] num_hashes) -> Tensor[]");
  m.def("feat_hash_int(Tensor[] values, int[] seeds, int[] num_hashes) -> Tensor[]");
  m.def("feat_same_bytes(Tensor[] a, Tensor[] b) -> Tensor");
  m.def("feat_cross(Tensor[] values, Tensor?[] splits, int[] arity, int[] cap, int[] seeds, int rows) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("feat_mod(Tensor[] values, int[] n) -> Tensor[]");
  m.def("feat_bucketize(Tensor[] values, Tensor[] boundaries) -> Tensor[]");
  m.def("feat_log1p(Tensor[] values, int[] mode) -> Tensor[]");
  m.def("feat_normalize(Tensor[] values, float[] mean, float[] std) -> Tensor[]");
  m.def("feat_clip(Tensor[] values, float[] lo, float[] hi) -> Tensor[]");
  m.def("feat_unpack_bits(Tensor[] bitmaps, int[] bit_offsets, int[] lengths) -> Tensor[]");
  m.def("feat_assemble_sparse(Tensor[] values, int[] widths, Tensor?[] index, Tensor?[] mask, Tensor?[] fill, "
        "Tensor?[] splits, int rows) -> (Tensor, Tensor, Tensor)");
  m.def("feat_assemble_dense(Tensor[] values, Tensor?[] index, Tensor?[] mask, Tensor?[] fill, int rows) -> Tensor");
  m.def("feat_truncate(Tensor[] values, Tensor?[] splits, int[] max_len, int[] keep_last, int[] pad_value, "
        "int[] pad, int rows) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(recis, CPU, m) {
  m.impl("lookup_forward", &recis::lookup_forward);
  m.impl("lookup_backward", &recis::lookup_backward);
  m.impl("lookup_backward_apply", &recis::lookup_backward_apply);
  m.impl("apply_update", &recis::apply_update);
  m.impl("clear_pending", &recis::clear_pending);
  m.impl("find", &recis::find);
  m.impl("find_or_insert", &recis::find_or_insert);
  m.impl("erase", &recis::erase);
  m.impl("gather", &recis::gather);
  m.impl("resolve", &recis::resolve);
  m.impl("dedup_jagged", &recis::dedup_jagged);
  m.impl("pool_rows", &recis::pool_rows);
  m.impl("pool_rows_backward", &recis::pool_rows_backward);
  m.impl("feat_hash_str", &recis::feat_hash_str);
  m.impl("feat_hash_int", &recis::feat_hash_int);
  m.impl("feat_same_bytes", &recis::feat_same_bytes);
  m.impl("feat_cross", &recis::feat_cross);
  m.impl("feat_mod", &recis::feat_mod);
  m.impl("feat_bucketize", &recis::feat_bucketize);
  m.impl("feat_log1p", &recis::feat_log1p);
  m.impl("feat_normalize", &recis::feat_normalize);
  m.impl("feat_clip", &recis::feat_clip);
  m.impl("feat_unpack_bits", &recis::feat_unpack_bits);
  m.impl("feat_assemble_sparse", &recis::feat_assemble_sparse);
  m.impl("feat_assemble_dense", &recis::feat_assemble_dense);
  m.impl("feat_truncate", &recis::feat_truncate);
}

namespace {

using recis::HashTable;
using TablePtr = std::shared_ptr<HashTable>;

struct Handle {
  TablePtr table;
  int64_t id;
};

at::Tensor long_tensor(int64_t n) { return at::empty({n}, at::TensorOptions().dtype(at::kLong)); }

py::tuple export_ns(Handle& h, uint32_t ns) {
  HashTable& t = *h.table;
  at::Tensor ids, emb, slots, counts, last;
  {
    // GIL first, then the table lock: a thread holding the lock never waits for the GIL.
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(t.mu);
    t.check_ns(ns);
    const int64_t n = static_cast<int64_t>(t.size(ns)), dim = t.dim(), w = t.slot_width();
    ids = long_tensor(n), counts = long_tensor(n), last = long_tensor(n);
    emb = at::empty({n, dim}), slots = at::empty({n, w});
    t.export_ns(ns, ids.data_ptr<int64_t>(), emb.data_ptr<float>(), slots.data_ptr<float>(),
                counts.data_ptr<int64_t>(), last.data_ptr<int64_t>());
  }
  return py::make_tuple(ids, emb, slots, counts, last);
}

// The rows of namespace ns touched at or after step `since` (last_seen >= since), as
// export_ns lays them out: what an incremental checkpoint saves, without copying the rest.
py::tuple export_ns_since(Handle& h, uint32_t ns, int64_t since) {
  HashTable& t = *h.table;
  TORCH_CHECK_VALUE(since >= 0, "export_ns_since: since must be a step >= 0, got ", since);
  const uint32_t from = static_cast<uint32_t>(std::min<int64_t>(since, UINT32_MAX));
  at::Tensor ids, emb, slots, counts, last;
  {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(t.mu);
    const auto sel = t.rows_since(ns, from);
    const int64_t n = static_cast<int64_t>(sel.size()), dim = t.dim(), w = t.slot_width();
    ids = long_tensor(n), counts = long_tensor(n), last = long_tensor(n);
    emb = at::empty({n, dim}), slots = at::empty({n, w});
    t.export_rows(sel, ids.data_ptr<int64_t>(), emb.data_ptr<float>(), slots.data_ptr<float>(),
                  counts.data_ptr<int64_t>(), last.data_ptr<int64_t>());
  }
  return py::make_tuple(ids, emb, slots, counts, last);
}

// The admission sketch's counters in their own dtype (uint32), copied as they are.
at::Tensor export_sketch(Handle& h) {
  std::lock_guard<std::mutex> lock(h.table->mu);
  const auto& c = h.table->sketch().counts();
  at::Tensor out = at::empty({static_cast<int64_t>(c.size())}, at::TensorOptions().dtype(at::kUInt32));
  if (!c.empty()) std::memcpy(out.data_ptr(), c.data(), c.size() * sizeof(uint32_t));
  return out;
}

// Restores the counters: uint32 (what get_sketch gives) is copied as it is; another integer
// dtype (int64, what checkpoints before this format held) is clamped to [0, 2^32 - 1].
void import_sketch(Handle& h, const at::Tensor& v) {
  std::lock_guard<std::mutex> lock(h.table->mu);
  auto& c = h.table->sketch().counts();
  TORCH_CHECK_VALUE(v.numel() == static_cast<int64_t>(c.size()), "admission sketch has ", c.size(),
                    " counters, the state holds ", v.numel());
  TORCH_CHECK_TYPE(!at::isFloatingType(v.scalar_type()) && !at::isComplexType(v.scalar_type()) &&
                       v.scalar_type() != at::kBool,
                   "admission sketch counters must be an integer tensor, got ", v.scalar_type());
  auto cpu = v.to(at::kCPU).contiguous();
  if (cpu.scalar_type() == at::kUInt32) {
    if (!c.empty()) std::memcpy(c.data(), cpu.data_ptr(), c.size() * sizeof(uint32_t));
    return;
  }
  auto vl = cpu.to(at::kLong);
  for (size_t i = 0; i < c.size(); ++i)
    c[i] = static_cast<uint32_t>(std::clamp<int64_t>(vl.data_ptr<int64_t>()[i], 0, UINT32_MAX));
}

void import_ns(Handle& h, uint32_t ns, const at::Tensor& ids, const at::Tensor& emb, const c10::optional<at::Tensor>& slots,
               const c10::optional<at::Tensor>& counts, const c10::optional<at::Tensor>& last) {
  HashTable& t = *h.table;
  const int64_t n = ids.size(0);
  TORCH_CHECK_TYPE(ids.scalar_type() == at::kLong, "import: ids must be int64, got ", ids.scalar_type());
  TORCH_CHECK_TYPE(emb.scalar_type() == at::kFloat, "import: rows must be float32, got ", emb.scalar_type());
  TORCH_CHECK_VALUE(emb.dim() == 2 && emb.size(0) == n && emb.size(1) == t.dim(), "import: rows must be [", n, ", ",
                    t.dim(), "], got ", emb.sizes());
  auto ids_c = ids.contiguous(), emb_c = emb.contiguous();
  at::Tensor slots_c, counts_c, last_c;
  if (slots && slots->numel() > 0) {
    TORCH_CHECK_VALUE(slots->dim() == 2 && slots->size(0) == n && slots->size(1) == t.slot_width(),
                      "import: slots must be [", n, ", ", t.slot_width(), "], got ", slots->sizes());
    slots_c = slots->to(at::kFloat).contiguous();
  }
  for (auto [what, t] : {std::make_pair("counts", &counts), std::make_pair("last_seen", &last)})
    TORCH_CHECK_VALUE(!*t || ((*t)->dim() == 1 && (*t)->size(0) == n), "import: ", what, " must be [", n,
                      "] (one per id), got ", (*t)->sizes());
  if (counts) counts_c = counts->to(at::kLong).contiguous();
  if (last) last_c = last->to(at::kLong).contiguous();
  py::gil_scoped_release nogil;
  std::lock_guard<std::mutex> lock(t.mu);
  t.check_ns(ns);
  t.import_ns(ns, n, ids_c.data_ptr<int64_t>(), emb_c.data_ptr<float>(),
              slots_c.defined() ? slots_c.data_ptr<float>() : nullptr,
              counts_c.defined() ? counts_c.data_ptr<int64_t>() : nullptr,
              last_c.defined() ? last_c.data_ptr<int64_t>() : nullptr);
}

// Wraps a table method so it runs under the table's lock.
template <class R, class... A>
auto locked(R (*f)(HashTable&, A...)) {
  return [f](Handle& h, A... args) -> R {
    std::lock_guard<std::mutex> lock(h.table->mu);
    return f(*h.table, args...);
  };
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "recis C++ core: hash tables, fused lookup kernels and sparse optimizers";
  py::class_<Handle>(m, "HashTable")
      .def(py::init([](int64_t dim, std::vector<uint64_t> seeds, int init_kind, float a, float b, float c) {
             auto t = std::make_shared<HashTable>(dim, seeds,
                                                  recis::InitSpec{static_cast<recis::InitKind>(init_kind), a, b, c});
             return Handle{t, recis::register_table(t)};
           }),
           py::arg("dim"), py::arg("seeds"), py::arg("init_kind"), py::arg("a"), py::arg("b"), py::arg("c"))
      .def_property_readonly("handle", [](Handle& h) { return h.id; })
      .def_property_readonly("dim", [](Handle& h) { return h.table->dim(); })
      .def_property_readonly("slot_width", [](Handle& h) { return h.table->slot_width(); })
      .def_property_readonly("num_namespaces", [](Handle& h) { return h.table->num_namespaces(); })
      .def("size", locked(+[](HashTable& t, uint32_t ns) { t.check_ns(ns); return t.size(ns); }))
      .def("map_capacity", locked(+[](HashTable& t, uint32_t ns) { t.check_ns(ns); return t.map_capacity(ns); }))
      .def("memory_bytes", locked(+[](HashTable& t) { return t.memory_bytes(); }))
      .def("map_bytes", locked(+[](HashTable& t, uint32_t ns) { return t.map_bytes(ns); }))
      .def("row_bytes", locked(+[](HashTable& t) { return t.store().row_bytes(); }))
      .def("get_step", locked(+[](HashTable& t) { return t.step(); }))
      .def("set_step", locked(+[](HashTable& t, uint32_t s) { t.set_step(s); }))
      .def("set_slots", locked(+[](HashTable& t, int64_t width, std::vector<float> init, bool reset) {
             t.set_slots(width, init, reset);
           }))
      .def("set_admission",
           locked(+[](HashTable& t, uint32_t min_count, uint64_t width, int depth) { t.set_admission(min_count, width, depth); }))
      .def("set_capacity", locked(+[](HashTable& t, uint32_t ns, uint64_t cap, int policy, double frac) {
             t.set_capacity(ns, cap, static_cast<recis::EvictPolicy>(policy), frac);
           }))
      .def("set_missing", locked(+[](HashTable& t, int mode) { t.set_missing(static_cast<recis::MissingMode>(mode)); }))
      .def("reserve", [](Handle& h, uint32_t ns, uint64_t n) {
             py::gil_scoped_release nogil;
             std::lock_guard<std::mutex> lock(h.table->mu);
             h.table->reserve(ns, n);
           })
      .def("evict_ttl", locked(+[](HashTable& t, uint32_t ttl) { return t.evict_ttl(ttl); }))
      .def("set_ttl", locked(+[](HashTable& t, uint32_t ttl, uint64_t interval) { t.set_ttl(ttl, interval); }))
      .def("clear", locked(+[](HashTable& t) { t.clear(); }))
      .def("pending_rows", locked(+[](HashTable& t) { return t.pending().n; }))
      .def("live_forwards", [](Handle& h) { return h.table->live_forwards(); })
      .def("set_keep_grads", locked(+[](HashTable& t, bool keep) {
             t.set_keep_grads(keep);
             if (!keep) t.clear_pending();
           }))
      .def("set_name", locked(+[](HashTable& t, uint32_t ns, std::string name) { t.set_name(ns, std::move(name)); }))
      .def("stats", locked(+[](HashTable& t) {
             const auto& s = t.stats();
             return py::dict(py::arg("inserts") = s.inserts, py::arg("evictions") = s.evictions,
                             py::arg("not_admitted") = s.not_admitted);
           }))
      .def("probe_counters", locked(+[](HashTable& t) {
             const auto& p = t.probe_counters();
             return py::dict(py::arg("key_hashes") = p.key_hashes, py::arg("map_probes") = p.map_probes);
           }))
      // Test hooks of the stamp clock that keeps last_seen in the id map's slots.
      .def("_set_stamp_limit", locked(+[](HashTable& t, uint32_t limit) { t.set_stamp_limit(limit); }))
      .def("_compact_stamps", locked(+[](HashTable& t) { t.compact_stamps(); }))
      // How many rows export(since) would select, computed with the row store unreadable (a
      // process that runs it faults if the selection touches the rows or their metadata).
      .def("_rows_since_without_rows", locked(+[](HashTable& t, uint32_t ns, uint32_t since) {
             t.store().protect_rows(true);
             const size_t n = t.rows_since(ns, since).size();
             t.store().protect_rows(false);
             return n;
           }))
      .def("_stamp_state", locked(+[](HashTable& t) {
             const auto st = t.stamp_state();
             return py::dict(py::arg("next") = st.next, py::arg("epochs") = st.epochs,
                             py::arg("compactions") = st.compactions, py::arg("steps_sorted") = st.steps_sorted);
           }))
      .def("get_sketch", &export_sketch)
      .def("set_sketch", &import_sketch)
      .def("initial_rows",
           [](Handle& h, uint32_t ns, const at::Tensor& ids) {
             h.table->check_ns(ns);
             TORCH_CHECK_TYPE(ids.scalar_type() == at::kLong, "ids must be int64, got ", ids.scalar_type());
             auto c = ids.contiguous();
             const int64_t n = c.size(0), dim = h.table->dim();
             at::Tensor out = at::empty({n, dim});
             for (int64_t i = 0; i < n; ++i)
               h.table->fill_initial(ns, c.data_ptr<int64_t>()[i], out.data_ptr<float>() + i * dim);
             return out;
           })
      .def("export_ns", &export_ns)
      .def("export_ns_since", &export_ns_since, py::arg("ns"), py::arg("since"))
      .def("import_ns", &import_ns, py::arg("ns"), py::arg("ids"), py::arg("rows"), py::arg("slots") = py::none(),
           py::arg("counts") = py::none(), py::arg("last_seen") = py::none());
  // The C++ side of recis.vocabulary, which checks it at import: every code and layout as the kernels define them.
  m.def("vocabulary", [] {
    auto codes = [](const auto& names) {
      py::dict d;
      for (const auto& [name, code] : names) d[name] = static_cast<int>(code);
      return d;
    };
    py::dict optimizers;
    for (size_t k = 0; k < std::size(recis::kOptimLayouts); ++k) {
      const auto& L = recis::kOptimLayouts[k];
      py::list hyper;
      for (const char* h : L.hyper)
        if (h) hyper.append(h);
      optimizers[L.name] = py::dict(py::arg("code") = k, py::arg("slots_per_dim") = L.slots_per_dim,
                                    py::arg("slots_per_row") = L.slots_per_row, py::arg("hyper") = py::tuple(hyper));
    }
    py::dict hashing(py::arg("golden") = recis::kGolden, py::arg("mix1") = recis::kMix1,
                     py::arg("mix2") = recis::kMix2, py::arg("seed_salt") = recis::kSeedSalt,
                     py::arg("column_step") = recis::kColumnStep, py::arg("attempt_step") = recis::kAttemptStep);
    return py::dict(py::arg("optimizers") = optimizers, py::arg("combiners") = codes(recis::kCombinerNames),
                    py::arg("lookup_modes") = codes(recis::kLookupModeNames),
                    py::arg("missing_modes") = codes(recis::kMissingModeNames),
                    py::arg("init_kinds") = codes(recis::kInitKindNames),
                    py::arg("evict_policies") = codes(recis::kEvictPolicyNames), py::arg("hashing") = hashing,
                    py::arg("reduction_lanes") = py::dict(py::arg("rowwise_adagrad") = recis::kRowwiseAdagradLanes));
  });
}

#include "ops/resolve_op.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <vector>

#include "common/gil.h"
#include "hashtable/registry.h"
#include "ops/op_checks.h"
#include "ops/table_ops.h"

namespace recis {

// The rows of n distinct keys (ns[i], ids[i]), -1 where a key has none. `mode` is a LookupMode
// (as lookup_forward): kEval finds only; kTrain and kTrainWithGrad are a training lookup: the step
// advances, hits count counts[i] occurrences, misses go through admission (counts[i] at once) and
// are inserted, exactly as a lookup_forward whose batch held each key counts[i] times;
// kTrainWithGrad also holds the rows until the returned tensor is freed (a backward may still
// come), like lookup_forward's unique_rows.
at::Tensor resolve(at::Tensor& token, int64_t handle, const at::Tensor& ns_in, const at::Tensor& ids_in,
                   const at::Tensor& counts_in, int64_t mode) {
  check_ids(ids_in, "ids");
  check_ids(ns_in, "namespaces");
  check_ids(counts_in, "counts");
  const int64_t n = ids_in.size(0);
  TORCH_CHECK_VALUE(ns_in.size(0) == n && counts_in.size(0) == n, "recis: resolve takes one namespace and one count "
                    "per id, got ", ns_in.size(0), " namespaces and ", counts_in.size(0), " counts for ", n, " ids");
  TORCH_CHECK_VALUE(mode >= 0 && mode <= static_cast<int64_t>(LookupMode::kTrainWithGrad), "recis: unknown lookup mode ",
                    mode);
  const bool train = mode != static_cast<int64_t>(LookupMode::kEval);
  auto table = table_from_handle(handle);
  const at::Tensor ids = ids_in.contiguous(), ns_c = ns_in.contiguous(), counts_c = counts_in.contiguous();
  const int64_t* ns64 = ns_c.data_ptr<int64_t>();
  const int64_t* c64 = counts_c.data_ptr<int64_t>();
  std::vector<uint32_t> ns(n), counts(n);
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(ns64[i] >= 0, "recis: resolve got namespace ", ns64[i], " for id ", ids.data_ptr<int64_t>()[i]);
    table->check_ns(static_cast<uint32_t>(ns64[i]));
    TORCH_CHECK_VALUE(c64[i] >= 1, "recis: resolve got count ", c64[i], " for id ", ids.data_ptr<int64_t>()[i],
                      " (each key occurs at least once)");
    ns[i] = static_cast<uint32_t>(ns64[i]);
    counts[i] = static_cast<uint32_t>(std::min<int64_t>(c64[i], UINT32_MAX));
  }
  at::Tensor rows = at::empty({n}, at::TensorOptions().dtype(at::kLong));
  {
    GilRelease nogil;
    std::lock_guard<std::mutex> lock(table->mu);
    const uint32_t step_before = table->step();
    if (train) table->advance_step();
    try {
      table->resolve(ns.data(), ids.data_ptr<int64_t>(), counts.data(), n, train, rows.data_ptr<int64_t>());
    } catch (...) {
      table->set_step(step_before);  // a refused batch leaves no trace
      throw;
    }
    if (mode == static_cast<int64_t>(LookupMode::kTrainWithGrad)) rows = leased(table, rows, table->step());
  }
  if (train) bump(token);
  return rows;
}

}  // namespace recis

// Helpers shared by the feature kernels: GIL release, work split over lists of columns,
// and typed views of index / offsets tensors that may be int32 or int64 (Arrow's two widths).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <Python.h>

#include "common/gil.h"
#include "common/storage_pool.h"

#include <algorithm>
#include <atomic>
#include <initializer_list>
#include <utility>
#include <string>
#include <vector>

namespace recis {
namespace feat {


// A range [begin, end) of one item (column) of a fused call.
struct Chunk {
  int64_t item, begin, end;
};

// Cuts items of the given sizes into chunks of at most `grain` elements (at least one chunk per
// item, so empty items are visited too), in item order.
inline std::vector<Chunk> make_chunks(const std::vector<int64_t>& sizes, int64_t grain) {
  std::vector<Chunk> chunks;
  for (int64_t i = 0; i < static_cast<int64_t>(sizes.size()); ++i) {
    int64_t b = 0;
    do {
      const int64_t e = std::min(sizes[i], b + grain);
      chunks.push_back({i, b, e});
      b = e;
    } while (b < sizes[i]);
  }
  return chunks;
}

// Runs fn(c) for c in [0, n) on the intra-op thread pool, handing out indices one at a time
// (columns differ in cost: a static split would leave a thread idle).
template <class F>
void parallel_dynamic(int64_t n, const F& fn) {
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), n);
  if (threads <= 1 || at::in_parallel_region()) {
    for (int64_t c = 0; c < n; ++c) fn(c);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < n;) fn(c);
  });
}

// Runs fn(chunk) for every chunk, in parallel.
template <class F>
void for_chunks(const std::vector<Chunk>& chunks, const F& fn) {
  parallel_dynamic(static_cast<int64_t>(chunks.size()), [&](int64_t c) { fn(chunks[c]); });
}

constexpr int64_t kGrain = 1 << 14;

// An int32 or int64 1-D tensor read as int64 (Arrow offsets, dictionary indices).
struct IntView {
  const void* p = nullptr;
  bool wide = true;
  int64_t n = 0;
  IntView() = default;
  IntView(const at::Tensor& t, const char* what) {
    TORCH_CHECK_TYPE(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, "recis features: ", what,
                     " must be int32 or int64, got ", t.scalar_type());
    TORCH_CHECK_VALUE(t.dim() == 1 && t.is_contiguous(), "recis features: ", what, " must be contiguous 1-D");
    TORCH_CHECK(t.device().is_cpu(), "recis features: ", what, " must be on cpu, got ", t.device());
    p = t.data_ptr(), wide = t.scalar_type() == at::kLong, n = t.size(0);
  }
  explicit operator bool() const { return p != nullptr; }
  int64_t operator[](int64_t i) const {
    return wide ? static_cast<const int64_t*>(p)[i] : static_cast<const int32_t*>(p)[i];
  }
};

// Calls f with the view's typed pointer (const int32_t* or const int64_t*).
template <class F>
decltype(auto) visit_ints(const IntView& v, const F& f) {
  return v.wide ? f(static_cast<const int64_t*>(v.p)) : f(static_cast<const int32_t*>(v.p));
}

// A 1-D output tensor for per-batch results: storages that this thread handed out before are
// reused once nothing else references them (the caller dropped its batch), so a stream of
// batches does not fault in fresh pages for every output.
inline at::Tensor pooled_empty(int64_t n, at::ScalarType dtype) {
  static thread_local StoragePool pool(16);
  return pool.empty({n}, dtype);
}

// One output per column of a fused call, as views of one pooled buffer.
inline std::vector<at::Tensor> pooled_outputs(const std::vector<int64_t>& sizes, at::ScalarType dtype) {
  int64_t total = 0;
  for (int64_t n : sizes) total += n;
  at::Tensor buffer = pooled_empty(total, dtype);
  std::vector<at::Tensor> out;
  out.reserve(sizes.size());
  int64_t offset = 0;
  for (int64_t n : sizes) {
    out.push_back(buffer.narrow(0, offset, n));
    offset += n;
  }
  return out;
}

// Raised from a kernel loop (kept out of line so the loop stays tight).
[[noreturn]] inline void index_error(int64_t e, int64_t p, int64_t n) {
  TORCH_CHECK_INDEX(false, "recis features: index ", e, " at position ", p, " is outside [0, ", n, ")");
  __builtin_unreachable();
}

inline void check_cpu_1d(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), "recis features: ", what, " must be on cpu, got ", t.device());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.is_contiguous(), "recis features: ", what, " must be contiguous 1-D, got shape ",
                    t.sizes());
}

inline const bool* mask_ptr(const c10::optional<at::Tensor>& m, int64_t n, const char* what) {
  if (!m.has_value() || !m->defined()) return nullptr;
  TORCH_CHECK_TYPE(m->scalar_type() == at::kBool, "recis features: ", what, " mask must be bool, got ",
                   m->scalar_type());
  check_cpu_1d(*m, what);
  TORCH_CHECK_VALUE(m->size(0) >= n, "recis features: ", what, " mask has ", m->size(0), " entries, need ", n);
  return m->data_ptr<bool>();
}

inline IntView optional_ints(const c10::optional<at::Tensor>& t, const char* what) {
  if (!t.has_value() || !t->defined()) return IntView();
  return IntView(*t, what);
}

// Every per-column argument of a fused call needs one entry per column:
// check_sizes(F, {FEAT_ARG(seeds), FEAT_ARG(mask)}).
inline void check_sizes(size_t n, std::initializer_list<std::pair<size_t, const char*>> args) {
  for (const auto& [size, what] : args)
    TORCH_CHECK_VALUE(size == n, "recis features: ", what, " has ", size, " entries, expected ", n);
}
#define FEAT_ARG(x) std::pair<size_t, const char*>((x).size(), #x)

}  // namespace feat
}  // namespace recis

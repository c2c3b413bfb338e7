// Multi-item jagged outputs: item f has `rows` bags; all items' values are concatenated
// (item-major, then row), as in a KeyedJaggedTensor.
#pragma once
#include "features/common.h"

namespace recis {
namespace feat {

struct JaggedOut {
  at::Tensor values;   // int64 [total]
  at::Tensor lengths;  // int64 [items * rows]
  at::Tensor offsets;  // int64 [items * rows + 1]
  at::Tensor counters; // int64 [items, n_counters]: what count() reported per item
};

// count(item, begin, end, len, ctr) writes the lengths of rows [begin, end) of an item to
// len[0 .. end - begin) and may add to ctr[0 .. n_counters); write(item, begin, end, dst) then
// writes those rows' values, back to back, at dst. Two parallel passes with a scan of the chunk
// totals in between, so the result does not depend on the thread count.
template <class Count, class Write>
JaggedOut build_jagged(int64_t items, int64_t rows, int64_t n_counters, const Count& count, const Write& write) {
  const auto i64 = at::TensorOptions().dtype(at::kLong);
  JaggedOut out;
  out.lengths = pooled_empty(items * rows, at::kLong);
  out.offsets = pooled_empty(items * rows + 1, at::kLong);
  out.counters = at::zeros({items, n_counters}, i64);
  const auto chunks = make_chunks(std::vector<int64_t>(items, rows), kGrain);
  const int64_t nc = static_cast<int64_t>(chunks.size()), width = std::max<int64_t>(n_counters, 1);
  std::vector<int64_t> base(nc + 1, 0), ctr(nc * width, 0);
  int64_t* len = out.lengths.data_ptr<int64_t>();
  at::parallel_for(0, nc, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      const Chunk& ch = chunks[c];
      int64_t* l = len + ch.item * rows + ch.begin;
      count(ch.item, ch.begin, ch.end, l, ctr.data() + c * width);
      int64_t total = 0;
      for (int64_t r = 0; r < ch.end - ch.begin; ++r) total += l[r];
      base[c + 1] = total;
    }
  });
  int64_t* counters = out.counters.data_ptr<int64_t>();
  for (int64_t c = 0; c < nc; ++c) {
    base[c + 1] += base[c];
    for (int64_t k = 0; k < n_counters; ++k) counters[chunks[c].item * n_counters + k] += ctr[c * width + k];
  }
  out.values = pooled_empty(base[nc], at::kLong);
  int64_t* off = out.offsets.data_ptr<int64_t>();
  int64_t* vals = out.values.data_ptr<int64_t>();
  at::parallel_for(0, nc, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      const Chunk& ch = chunks[c];
      const int64_t* l = len + ch.item * rows;
      int64_t o = base[c];
      for (int64_t r = ch.begin; r < ch.end; ++r) {
        off[ch.item * rows + r] = o;
        o += l[r];
      }
      write(ch.item, ch.begin, ch.end, vals + base[c]);
    }
  });
  off[items * rows] = base[nc];
  return out;
}

// Row r's positions [begin, end): from splits when given, else exactly position r.
struct Rows {
  IntView splits;
  int64_t begin(int64_t r) const { return splits ? splits[r] : r; }
  int64_t end(int64_t r) const { return splits ? splits[r + 1] : r + 1; }
};

inline Rows make_rows(const c10::optional<at::Tensor>& splits, int64_t rows, const char* what) {
  Rows out{optional_ints(splits, what)};
  if (out.splits) {
    TORCH_CHECK_VALUE(out.splits.n == rows + 1, "recis features: ", what, " has ", out.splits.n,
                      " entries, expected rows + 1 = ", rows + 1);
  }
  return out;
}

// Checks that row r's positions lie in [0, n) and are non-decreasing; returns the first position.
inline void check_rows(const Rows& rs, int64_t rows, int64_t n, const char* what) {
  if (!rs.splits) {
    TORCH_CHECK_VALUE(rows <= n, "recis features: ", what, ": ", rows, " rows but only ", n, " positions");
    return;
  }
  TORCH_CHECK_VALUE(rs.splits[0] >= 0 && rs.splits[rows] <= n, "recis features: ", what, " spans positions [",
                    rs.splits[0], ", ", rs.splits[rows], ") outside [0, ", n, ")");
  for (int64_t r = 0; r < rows; ++r)
    TORCH_CHECK_VALUE(rs.splits[r] <= rs.splits[r + 1], "recis features: ", what, " decreases at row ", r);
}

}  // namespace feat
}  // namespace recis

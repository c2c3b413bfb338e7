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

// total(item, begin, end, ctr) returns how many values rows [begin, end) of an item hold and
// may add to ctr[0 .. n_counters); write(item, begin, end, len, dst) then writes those rows'
// lengths to len[0 .. end - begin) and their values, back to back, at dst. Two parallel passes
// with a scan of the chunk totals in between (the first reads little, the second writes each
// output once), so the result does not depend on the thread count.
template <class Total, class Write>
JaggedOut build_jagged(int64_t items, int64_t rows, int64_t n_counters, const Total& total, const Write& write) {
  JaggedOut out;
  out.lengths = pooled_empty(items * rows, at::kLong);
  out.offsets = pooled_empty(items * rows + 1, at::kLong);
  out.counters = at::zeros({items, n_counters}, at::TensorOptions().dtype(at::kLong));
  const auto chunks = make_chunks(std::vector<int64_t>(items, rows), kGrain);
  const int64_t nc = static_cast<int64_t>(chunks.size()), width = std::max<int64_t>(n_counters, 1);
  std::vector<int64_t> base(nc + 1, 0), ctr(nc * width, 0);
  parallel_dynamic(nc, [&](int64_t c) {
    base[c + 1] = total(chunks[c].item, chunks[c].begin, chunks[c].end, ctr.data() + c * width);
  });
  int64_t* counters = out.counters.data_ptr<int64_t>();
  for (int64_t c = 0; c < nc; ++c) {
    base[c + 1] += base[c];
    for (int64_t k = 0; k < n_counters; ++k) counters[chunks[c].item * n_counters + k] += ctr[c * width + k];
  }
  out.values = pooled_empty(base[nc], at::kLong);
  int64_t* len = out.lengths.data_ptr<int64_t>();
  int64_t* off = out.offsets.data_ptr<int64_t>();
  int64_t* vals = out.values.data_ptr<int64_t>();
  parallel_dynamic(nc, [&](int64_t c) {
    const Chunk& ch = chunks[c];
    int64_t* l = len + ch.item * rows + ch.begin;
    int64_t* o = off + ch.item * rows + ch.begin;
    write(ch.item, ch.begin, ch.end, l, vals + base[c]);
    int64_t at = base[c];
    for (int64_t r = 0; r < ch.end - ch.begin; ++r) {
      o[r] = at;
      at += l[r];
    }
    TORCH_CHECK(at == base[c + 1], "recis features: a jagged chunk wrote ", at - base[c], " values, counted ",
                base[c + 1] - base[c]);
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

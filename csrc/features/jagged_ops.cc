#include "features/jagged_ops.h"

#include "features/jagged.h"

#include <type_traits>

namespace recis {
namespace {

using feat::IntView;
using feat::Rows;

// One column of feat_assemble_sparse / feat_assemble_dense, checked.
struct Column {
  int64_t width = 1, entries = 0, positions = 0;
  IntView index;
  const bool* mask = nullptr;
  Rows rows;
};

Column make_column(const at::Tensor& values, int64_t width, const c10::optional<at::Tensor>& index,
                   const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& splits, int64_t rows) {
  feat::check_cpu_1d(values, "values");
  TORCH_CHECK_VALUE(width >= 1 && values.numel() % width == 0, "recis features: ", values.numel(),
                    " values do not split into entries of width ", width);
  Column c;
  c.width = width, c.entries = values.numel() / width;
  c.index = feat::optional_ints(index, "index");
  c.positions = c.index ? c.index.n : c.entries;
  c.mask = feat::mask_ptr(mask, c.positions, "position");
  c.rows = feat::make_rows(splits, rows, "splits");
  feat::check_rows(c.rows, rows, c.positions, "a column");
  return c;
}

// The entry that position p reads, bounds-checked.
inline int64_t entry_of(const Column& c, int64_t p) {
  const int64_t e = c.index ? c.index[p] : p;
  if (C10_UNLIKELY(static_cast<uint64_t>(e) >= static_cast<uint64_t>(c.entries))) feat::index_error(e, p, c.entries);
  return e;
}

// Calls f(idx) with the column's typed index pointer, or with a null `const int32_t*` and
// kIndex = false when the column has no index; f is a generic lambda templated on both.
template <class F>
void visit_index(const Column& c, const F& f) {
  if (!c.index) {
    f(static_cast<const int32_t*>(nullptr), std::false_type{});
  } else {
    feat::visit_ints(c.index, [&](auto* idx) { f(idx, std::true_type{}); });
  }
}

// Rows [b, e) of a column with one position per row and width 1 (the common case, kept tight):
// writes the kept values back to back at dst; a masked-out row writes `fill` (kFill) or nothing.
template <bool kMask, bool kFill, class I, bool kIndex>
void gather_rows(const int64_t* vals, const I* idx, std::integral_constant<bool, kIndex>, int64_t n,
                 const bool* mask, int64_t fill, int64_t b, int64_t e, int64_t* dst) {
  for (int64_t r = b; r < e; ++r) {
    if (kMask && !mask[r]) {
      if (kFill) *dst++ = fill;
      continue;
    }
    const int64_t k = kIndex ? static_cast<int64_t>(idx[r]) : r;
    if (kIndex && C10_UNLIKELY(static_cast<uint64_t>(k) >= static_cast<uint64_t>(n))) feat::index_error(k, r, n);
    *dst++ = vals[k];
  }
}

// As gather_rows, into column f of a row-major float matrix with F columns.
template <bool kMask, class T, class I, bool kIndex>
void gather_dense(const T* vals, const I* idx, std::integral_constant<bool, kIndex>, int64_t n, const bool* mask,
                  double fill, int64_t b, int64_t e, float* dst, int64_t f, int64_t F) {
  for (int64_t r = b; r < e; ++r) {
    if (kMask && !mask[r]) {
      dst[r * F + f] = static_cast<float>(fill);
      continue;
    }
    const int64_t k = kIndex ? static_cast<int64_t>(idx[r]) : r;
    if (kIndex && C10_UNLIKELY(static_cast<uint64_t>(k) >= static_cast<uint64_t>(n))) feat::index_error(k, r, n);
    dst[r * F + f] = static_cast<float>(vals[k]);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> feat_assemble_sparse(at::TensorList values, at::IntArrayRef widths,
                                                                    const OptTensors& index, const OptTensors& mask,
                                                                    const OptTensors& fill, const OptTensors& splits,
                                                                    int64_t rows) {
  const size_t F = values.size();
  feat::check_sizes(F,
                    {FEAT_ARG(widths), FEAT_ARG(index), FEAT_ARG(mask), FEAT_ARG(fill), FEAT_ARG(splits)});
  TORCH_CHECK_VALUE(rows >= 0, "recis features: rows must be >= 0, got ", rows);
  std::vector<Column> cols(F);
  std::vector<const int64_t*> vals(F), fills(F, nullptr);
  for (size_t f = 0; f < F; ++f) {
    TORCH_CHECK_TYPE(values[f].scalar_type() == at::kLong, "recis features: sparse values must be int64 ids, got ",
                     values[f].scalar_type());
    cols[f] = make_column(values[f], widths[f], index.get(f), mask.get(f), splits.get(f), rows);
    vals[f] = values[f].data_ptr<int64_t>();
    const auto fl = fill.get(f);
    if (fl.has_value() && fl->defined()) {
      TORCH_CHECK_TYPE(fl->scalar_type() == at::kLong && fl->numel() == widths[f],
                       "recis features: fill must hold ", widths[f], " int64 ids");
      fills[f] = fl->data_ptr<int64_t>();
    }
  }
  GilRelease nogil;
  auto out = feat::build_jagged(
      static_cast<int64_t>(F), rows, 0,
      [&](int64_t f, int64_t b, int64_t e, int64_t*) {
        const Column& c = cols[f];
        const int64_t pb = c.rows.begin(b), pe = c.rows.begin(e);  // the rows' positions are contiguous
        int64_t n = pe - pb;
        if (c.mask && !fills[f]) {
          n = 0;
          for (int64_t p = pb; p < pe; ++p) n += c.mask[p];
        }
        return n * c.width;
      },
      [&](int64_t f, int64_t b, int64_t e, int64_t* len, int64_t* dst) {
        const Column& c = cols[f];
        const bool drop = c.mask && !fills[f];
        if (!c.rows.splits && c.width == 1) {
          for (int64_t r = b; r < e; ++r) len[r - b] = drop ? c.mask[r] : 1;
          if (!c.mask && !c.index) {
            std::copy(vals[f] + b, vals[f] + e, dst);
            return;
          }
          const int64_t fv = fills[f] ? fills[f][0] : 0;
          visit_index(c, [&](auto* idx, auto has) {
            if (!c.mask) {
              gather_rows<false, false>(vals[f], idx, has, c.entries, c.mask, fv, b, e, dst);
            } else if (fills[f]) {
              gather_rows<true, true>(vals[f], idx, has, c.entries, c.mask, fv, b, e, dst);
            } else {
              gather_rows<true, false>(vals[f], idx, has, c.entries, c.mask, fv, b, e, dst);
            }
          });
          return;
        }
        const int64_t w = c.width;
        for (int64_t r = b; r < e; ++r) {
          int64_t n = 0;
          for (int64_t p = c.rows.begin(r), pe = c.rows.end(r); p < pe; ++p) {
            const int64_t* src;
            if (!c.mask || c.mask[p]) {
              src = vals[f] + entry_of(c, p) * w;
            } else if (fills[f]) {
              src = fills[f];
            } else {
              continue;
            }
            for (int64_t j = 0; j < w; ++j) *dst++ = src[j];
            n += w;
          }
          len[r - b] = n;
        }
      });
  return {out.values, out.lengths, out.offsets};
}

at::Tensor feat_assemble_dense(at::TensorList values, const OptTensors& index, const OptTensors& mask,
                               const OptTensors& fill, int64_t rows) {
  const int64_t F = static_cast<int64_t>(values.size());
  feat::check_sizes(F, {FEAT_ARG(index), FEAT_ARG(mask), FEAT_ARG(fill)});
  TORCH_CHECK_VALUE(rows >= 0, "recis features: rows must be >= 0, got ", rows);
  std::vector<Column> cols(F);
  std::vector<double> fills(F, 0.0);
  for (int64_t f = 0; f < F; ++f) {
    const auto t = values[f].scalar_type();
    TORCH_CHECK_TYPE(at::isIntegralType(t, false) || t == at::kFloat || t == at::kDouble,
                     "recis features: dense values must be numeric, got ", t);
    cols[f] = make_column(values[f], 1, index.get(f), mask.get(f), c10::nullopt, rows);
    const auto fl = fill.get(f);
    if (fl.has_value() && fl->defined()) {
      TORCH_CHECK_TYPE(fl->scalar_type() == at::kDouble && fl->numel() == 1,
                       "recis features: a dense fill must be one float64");
      fills[f] = fl->data_ptr<double>()[0];
    } else if (cols[f].mask) {
      for (int64_t r = 0; r < rows; ++r)
        TORCH_CHECK_VALUE(cols[f].mask[r], "recis features: dense column ", f, " has a null at row ", r,
                          " and no fill value");
    }
  }
  at::Tensor out = feat::pooled_empty(rows * F, at::kFloat).view({rows, F});
  float* dst = out.data_ptr<float>();
  GilRelease nogil;
  feat::for_chunks(feat::make_chunks({rows}, feat::kGrain / 4), [&](const feat::Chunk& ch) {
    for (int64_t f = 0; f < F; ++f) {
      const Column& c = cols[f];
      AT_DISPATCH_ALL_TYPES(values[f].scalar_type(), "feat_assemble_dense", [&] {
        const scalar_t* src = values[f].data_ptr<scalar_t>();
        visit_index(c, [&](auto* idx, auto has) {
          if (c.mask) {
            gather_dense<true>(src, idx, has, c.entries, c.mask, fills[f], ch.begin, ch.end, dst, f, F);
          } else {
            gather_dense<false>(src, idx, has, c.entries, c.mask, fills[f], ch.begin, ch.end, dst, f, F);
          }
        });
      });
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> feat_truncate(at::TensorList values, const OptTensors& splits,
                                                                         at::IntArrayRef max_len,
                                                                         at::IntArrayRef keep_last,
                                                                         at::IntArrayRef pad_value, at::IntArrayRef pad,
                                                                         int64_t rows) {
  const size_t F = values.size();
  feat::check_sizes(F,
                    {FEAT_ARG(splits), FEAT_ARG(max_len), FEAT_ARG(keep_last), FEAT_ARG(pad_value), FEAT_ARG(pad)});
  TORCH_CHECK_VALUE(rows >= 0, "recis features: rows must be >= 0, got ", rows);
  std::vector<Column> cols(F);
  std::vector<const int64_t*> vals(F);
  for (size_t f = 0; f < F; ++f) {
    TORCH_CHECK_TYPE(values[f].scalar_type() == at::kLong, "recis features: truncate needs int64 ids, got ",
                     values[f].scalar_type());
    TORCH_CHECK_VALUE(max_len[f] >= 0, "recis features: max_len must be >= 0, got ", max_len[f]);
    cols[f] = make_column(values[f], 1, c10::nullopt, c10::nullopt, splits.get(f), rows);
    vals[f] = values[f].data_ptr<int64_t>();
  }
  GilRelease nogil;
  auto out = feat::build_jagged(
      static_cast<int64_t>(F), rows, 2,
      [&](int64_t f, int64_t b, int64_t e, int64_t* ctr) {
        int64_t total = 0;
        for (int64_t r = b; r < e; ++r) {
          const int64_t n = cols[f].rows.end(r) - cols[f].rows.begin(r), kept = std::min(n, max_len[f]);
          const int64_t len = pad[f] ? max_len[f] : kept;
          ctr[0] += n - kept;
          ctr[1] += len - kept;
          total += len;
        }
        return total;
      },
      [&](int64_t f, int64_t b, int64_t e, int64_t* len, int64_t* dst) {
        for (int64_t r = b; r < e; ++r) {
          const int64_t pb = cols[f].rows.begin(r), pe = cols[f].rows.end(r), kept = std::min(pe - pb, max_len[f]);
          const int64_t* src = vals[f] + (keep_last[f] ? pe - kept : pb);
          dst = std::copy(src, src + kept, dst);
          if (pad[f]) dst = std::fill_n(dst, max_len[f] - kept, pad_value[f]);
          len[r - b] = pad[f] ? max_len[f] : kept;
        }
      });
  return {out.values, out.lengths, out.offsets, out.counters};
}

}  // namespace recis

#include "features/hash_ops.h"

#include <atomic>
#include <cstring>

#include "features/jagged.h"
#include "features/xxhash64.h"

namespace recis {
namespace {

using feat::Chunk;
using feat::IntView;

constexpr int64_t kMaxCrossArity = 16;

// The outputs of a hash call: positions * num_hashes ids per column.
std::vector<at::Tensor> hashes_out(const std::vector<int64_t>& sizes, at::IntArrayRef num_hashes) {
  std::vector<int64_t> n(sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i) {
    TORCH_CHECK_VALUE(num_hashes[i] >= 1, "recis features: num_hashes must be >= 1, got ", num_hashes[i]);
    n[i] = sizes[i] * num_hashes[i];
  }
  return feat::pooled_outputs(n, at::kLong);
}

}  // namespace

std::vector<at::Tensor> feat_hash_str(at::TensorList offsets, at::TensorList data,
                                      const c10::List<c10::optional<at::Tensor>>& index,
                                      const c10::List<c10::optional<at::Tensor>>& mask, at::IntArrayRef seeds,
                                      at::IntArrayRef num_hashes) {
  const size_t F = offsets.size();
  feat::check_sizes(F,
                    {FEAT_ARG(data), FEAT_ARG(index), FEAT_ARG(mask), FEAT_ARG(seeds), FEAT_ARG(num_hashes)});
  std::vector<IntView> off(F), idx(F);
  std::vector<const uint8_t*> bytes(F);
  std::vector<const bool*> valid(F);
  std::vector<int64_t> n_bytes(F), n_str(F), sizes(F);
  std::vector<at::Tensor> out(F);
  for (size_t i = 0; i < F; ++i) {
    off[i] = IntView(offsets[i], "string offsets");
    TORCH_CHECK_VALUE(off[i].n >= 1, "recis features: string offsets need at least one entry");
    TORCH_CHECK_TYPE(data[i].scalar_type() == at::kByte, "recis features: string data must be uint8, got ",
                     data[i].scalar_type());
    feat::check_cpu_1d(data[i], "string data");
    bytes[i] = data[i].data_ptr<uint8_t>(), n_bytes[i] = data[i].numel(), n_str[i] = off[i].n - 1;
    idx[i] = feat::optional_ints(index.get(i), "dictionary index");
    sizes[i] = idx[i] ? idx[i].n : n_str[i];
    valid[i] = feat::mask_ptr(mask.get(i), sizes[i], "string");
  }
  out = hashes_out(sizes, num_hashes);
  GilRelease nogil;
  feat::for_chunks(feat::make_chunks(sizes, feat::kGrain), [&](const Chunk& c) {
    const int64_t i = c.item, k = num_hashes[i];
    const IntView& o = off[i];
    const uint64_t seed = static_cast<uint64_t>(seeds[i]);
    int64_t* dst = out[i].data_ptr<int64_t>();
    constexpr int64_t kAhead = 16;  // through an index, strings are read at random: prefetch them
    for (int64_t p = c.begin; p < c.end; ++p) {
      if (idx[i] && p + kAhead < c.end) {
        const int64_t s2 = idx[i][p + kAhead];
        if (static_cast<uint64_t>(s2) < static_cast<uint64_t>(n_str[i])) {
          __builtin_prefetch(o.wide ? static_cast<const void*>(static_cast<const int64_t*>(o.p) + s2)
                                    : static_cast<const void*>(static_cast<const int32_t*>(o.p) + s2));
          const int64_t s1 = idx[i][p + kAhead / 2];
          if (static_cast<uint64_t>(s1) < static_cast<uint64_t>(n_str[i])) __builtin_prefetch(bytes[i] + o[s1]);
        }
      }
      if (valid[i] && !valid[i][p]) {
        std::fill(dst + p * k, dst + (p + 1) * k, int64_t(0));
        continue;
      }
      const int64_t s = idx[i] ? idx[i][p] : p;
      TORCH_CHECK_INDEX(s >= 0 && s < n_str[i], "recis features: dictionary index ", s, " at position ", p,
                        " is outside [0, ", n_str[i], ")");
      const int64_t b = o[s], e = o[s + 1];
      TORCH_CHECK_VALUE(0 <= b && b <= e && e <= n_bytes[i], "recis features: string ", s, " spans bytes [", b,
                        ", ", e, ") outside the data buffer of ", n_bytes[i], " bytes");
      for (int64_t j = 0; j < k; ++j)
        dst[p * k + j] = static_cast<int64_t>(xxh64(bytes[i] + b, static_cast<uint64_t>(e - b), seed + j));
    }
  });
  return out;
}

std::vector<at::Tensor> feat_hash_int(at::TensorList values, at::IntArrayRef seeds, at::IntArrayRef num_hashes) {
  const size_t F = values.size();
  feat::check_sizes(F, {FEAT_ARG(seeds), FEAT_ARG(num_hashes)});
  std::vector<int64_t> sizes(F);
  std::vector<at::Tensor> out(F);
  for (size_t i = 0; i < F; ++i) {
    feat::check_cpu_1d(values[i], "integer values");
    TORCH_CHECK_TYPE(at::isIntegralType(values[i].scalar_type(), /*includeBool=*/false),
                     "recis features: hash_int needs integer values, got ", values[i].scalar_type());
    sizes[i] = values[i].numel();
  }
  out = hashes_out(sizes, num_hashes);
  GilRelease nogil;
  feat::for_chunks(feat::make_chunks(sizes, feat::kGrain), [&](const Chunk& c) {
    const int64_t i = c.item, k = num_hashes[i];
    const uint64_t seed = static_cast<uint64_t>(seeds[i]);
    int64_t* dst = out[i].data_ptr<int64_t>();
    AT_DISPATCH_INTEGRAL_TYPES(values[i].scalar_type(), "feat_hash_int", [&] {
      const scalar_t* src = values[i].data_ptr<scalar_t>();
      for (int64_t p = c.begin; p < c.end; ++p) {
        const uint64_t v = static_cast<uint64_t>(static_cast<int64_t>(src[p]));
        for (int64_t j = 0; j < k; ++j) dst[p * k + j] = static_cast<int64_t>(xxh64_u64(v, seed + j));
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> feat_cross(at::TensorList values,
                                                                      const c10::List<c10::optional<at::Tensor>>& splits,
                                                                      at::IntArrayRef arity, at::IntArrayRef cap,
                                                                      at::IntArrayRef seeds, int64_t rows) {
  const int64_t F = static_cast<int64_t>(arity.size());
  feat::check_sizes(F, {FEAT_ARG(cap), FEAT_ARG(seeds)});
  feat::check_sizes(values.size(), {FEAT_ARG(splits)});
  TORCH_CHECK_VALUE(rows >= 0, "recis features: rows must be >= 0, got ", rows);
  std::vector<int64_t> first(F + 1, 0);
  for (int64_t f = 0; f < F; ++f) {
    TORCH_CHECK_VALUE(arity[f] >= 1 && arity[f] <= kMaxCrossArity, "recis features: a cross takes 1 to ",
                      kMaxCrossArity, " inputs, got ", arity[f]);
    TORCH_CHECK_VALUE(cap[f] >= 0, "recis features: the cross cap must be >= 0, got ", cap[f]);
    first[f + 1] = first[f] + arity[f];
  }
  feat::check_sizes(static_cast<size_t>(first[F]), {FEAT_ARG(values)});
  std::vector<feat::Rows> in(first[F]);
  std::vector<const int64_t*> vals(first[F]);
  for (int64_t j = 0; j < first[F]; ++j) {
    TORCH_CHECK_TYPE(values[j].scalar_type() == at::kLong, "recis features: cross inputs must be int64 ids, got ",
                     values[j].scalar_type());
    feat::check_cpu_1d(values[j], "cross input");
    in[j] = feat::make_rows(splits.get(j), rows, "cross input splits");
    feat::check_rows(in[j], rows, values[j].numel(), "cross input");
    vals[j] = values[j].data_ptr<int64_t>();
  }
  GilRelease nogil;
  constexpr int64_t kHuge = int64_t(1) << 62;
  auto product = [&](int64_t f, int64_t r) {
    int64_t n = 1;
    for (int64_t j = first[f]; j < first[f + 1]; ++j) {
      const int64_t l = in[j].end(r) - in[j].begin(r);
      n = (l != 0 && n > kHuge / l) ? kHuge : n * l;
    }
    return n;
  };
  auto out = feat::build_jagged(
      F, rows, 1,
      [&](int64_t f, int64_t b, int64_t e, int64_t* ctr) {
        int64_t total = 0;
        for (int64_t r = b; r < e; ++r) {
          const int64_t n = product(f, r), kept = std::min(n, cap[f]);
          ctr[0] += n - kept;
          total += kept;
        }
        return total;
      },
      [&](int64_t f, int64_t b, int64_t e, int64_t* len, int64_t* dst) {
        const int64_t m = arity[f];
        uint8_t buf[8 * kMaxCrossArity];
        for (int64_t r = b; r < e; ++r) {
          const int64_t kept = std::min(product(f, r), cap[f]);
          len[r - b] = kept;
          int64_t digit[kMaxCrossArity] = {0};
          for (int64_t t = 0; t < kept; ++t) {
            for (int64_t j = 0; j < m; ++j) {
              const int64_t src = first[f] + j;
              uint64_t v = static_cast<uint64_t>(vals[src][in[src].begin(r) + digit[j]]);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
              v = __builtin_bswap64(v);
#endif
              std::memcpy(buf + 8 * j, &v, 8);
            }
            *dst++ = static_cast<int64_t>(xxh64(buf, static_cast<uint64_t>(8 * m), static_cast<uint64_t>(seeds[f])));
            for (int64_t j = m - 1; j >= 0; --j) {  // next combination, last input fastest
              const int64_t src = first[f] + j;
              if (++digit[j] < in[src].end(r) - in[src].begin(r)) break;
              digit[j] = 0;
            }
          }
        }
      });
  return {out.values, out.lengths, out.offsets, out.counters};
}

at::Tensor feat_same_bytes(at::TensorList a, at::TensorList b) {
  feat::check_sizes(a.size(), {FEAT_ARG(b)});
  const int64_t n = static_cast<int64_t>(a.size());
  at::Tensor out = at::ones({n}, at::TensorOptions().dtype(at::kBool));
  bool* same = out.data_ptr<bool>();
  std::vector<int64_t> sizes(n);
  for (int64_t i = 0; i < n; ++i) {
    for (const at::Tensor* t : {&a[i], &b[i]}) {
      TORCH_CHECK(t->device().is_cpu() && t->is_contiguous(),
                  "recis features: same_bytes needs contiguous cpu tensors");
    }
    same[i] = a[i].nbytes() == b[i].nbytes();
    sizes[i] = same[i] ? static_cast<int64_t>(a[i].nbytes()) : 0;
  }
  std::vector<std::atomic<bool>> differ(n);
  for (auto& d : differ) d.store(false);
  GilRelease nogil;
  feat::for_chunks(feat::make_chunks(sizes, 1 << 20), [&](const Chunk& c) {
    if (c.end == c.begin || differ[c.item].load(std::memory_order_relaxed)) return;
    const auto* pa = static_cast<const uint8_t*>(a[c.item].data_ptr()) + c.begin;
    const auto* pb = static_cast<const uint8_t*>(b[c.item].data_ptr()) + c.begin;
    if (pa != pb && std::memcmp(pa, pb, c.end - c.begin) != 0) differ[c.item].store(true, std::memory_order_relaxed);
  });
  for (int64_t i = 0; i < n; ++i) same[i] = same[i] && !differ[i].load();
  return out;
}

}  // namespace recis

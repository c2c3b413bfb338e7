#include "features/value_ops.h"

#include <array>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "features/common.h"

namespace recis {
namespace {

// out[i][p] = fn(i, values[i][p]) for every column i, dispatched on each column's dtype.
template <class OutT, class Fn>
std::vector<at::Tensor> map_values(at::TensorList values, bool ints_only, const char* op, const Fn& fn) {
  const size_t F = values.size();
  std::vector<int64_t> sizes(F);
  std::vector<at::Tensor> out(F);
  const auto out_type = c10::CppTypeToScalarType<OutT>::value;
  for (size_t i = 0; i < F; ++i) {
    feat::check_cpu_1d(values[i], op);
    const auto t = values[i].scalar_type();
    if (ints_only) {
      TORCH_CHECK_TYPE(at::isIntegralType(t, false), "recis features: ", op, " needs integer values, got ", t);
    } else {
      TORCH_CHECK_TYPE(at::isIntegralType(t, false) || t == at::kFloat || t == at::kDouble, "recis features: ", op,
                       " needs numeric values, got ", t);
    }
    sizes[i] = values[i].numel();
  }
  out = feat::pooled_outputs(sizes, out_type);
  GilRelease nogil;
  feat::for_chunks(feat::make_chunks(sizes, feat::kGrain), [&](const feat::Chunk& c) {
    OutT* dst = out[c.item].data_ptr<OutT>();
    AT_DISPATCH_ALL_TYPES(values[c.item].scalar_type(), "feat_map_values", [&] {
      const scalar_t* src = values[c.item].data_ptr<scalar_t>();
      for (int64_t p = c.begin; p < c.end; ++p) dst[p] = fn(c.item, src[p]);
    });
  });
  return out;
}

// Floor modulo by a fixed n without a division per value: u % n by Lemire's direct remainder
// (exact for all 64-bit u and n with a 128-bit magic number), shifted for negative x by
// 2^64 mod n, since x = u - 2^64 when x < 0.
struct FloorMod {
  unsigned __int128 magic;
  uint64_t n, wrap;  // wrap = n - 2^64 mod n, in [1, n]
  explicit FloorMod(int64_t d) : n(static_cast<uint64_t>(d)) {
    magic = ~static_cast<unsigned __int128>(0) / n + 1;
    wrap = n - (static_cast<uint64_t>(-n) % n);  // -n (mod 2^64) = 2^64 - n, same residue as 2^64
  }
  uint64_t umod(uint64_t u) const {
    const unsigned __int128 low = magic * u;
    const unsigned __int128 bottom = ((low & ~uint64_t(0)) * n) >> 64;
    return static_cast<uint64_t>((bottom + (low >> 64) * n) >> 64);
  }
  int64_t operator()(int64_t x) const {
    const uint64_t r = umod(static_cast<uint64_t>(x));
    if (x >= 0) return static_cast<int64_t>(r);
    const uint64_t t = r + wrap;  // (r - 2^64 mod n) mod n, r + wrap < 2n
    return static_cast<int64_t>(t >= n ? t - n : t);
  }
};

// log1p of the integers [0, kLogTable), computed once: most integer features are small counts.
constexpr int64_t kLogTable = 4096;
const double* log1p_table() {
  static const std::vector<double> table = [] {
    std::vector<double> t(kLogTable);
    for (int64_t i = 0; i < kLogTable; ++i) t[i] = std::log1p(static_cast<double>(i));
    return t;
  }();
  return table.data();
}

// kSpread[b] holds the 8 bits of b (least significant first) as 8 bytes of 0 / 1.
constexpr std::array<uint64_t, 256> spread_table() {
  std::array<uint64_t, 256> t{};
  for (int b = 0; b < 256; ++b)
    for (int k = 0; k < 8; ++k) t[b] |= static_cast<uint64_t>((b >> k) & 1) << (8 * k);
  return t;
}
constexpr std::array<uint64_t, 256> kSpread = spread_table();

}  // namespace

std::vector<at::Tensor> feat_mod(at::TensorList values, at::IntArrayRef n) {
  feat::check_sizes(values.size(), {FEAT_ARG(n)});
  std::vector<FloorMod> mods;
  for (int64_t m : n) {
    TORCH_CHECK_VALUE(m > 0, "recis features: mod needs n > 0, got ", m);
    mods.emplace_back(m);
  }
  return map_values<int64_t>(values, true, "mod", [&](int64_t i, auto v) { return mods[i](static_cast<int64_t>(v)); });
}

std::vector<at::Tensor> feat_bucketize(at::TensorList values, at::TensorList boundaries) {
  feat::check_sizes(values.size(), {FEAT_ARG(boundaries)});
  std::vector<const double*> b(values.size());
  std::vector<int64_t> nb(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    TORCH_CHECK_TYPE(boundaries[i].scalar_type() == at::kDouble, "recis features: boundaries must be float64, got ",
                     boundaries[i].scalar_type());
    feat::check_cpu_1d(boundaries[i], "boundaries");
    b[i] = boundaries[i].data_ptr<double>(), nb[i] = boundaries[i].numel();
    for (int64_t k = 0; k + 1 < nb[i]; ++k)
      TORCH_CHECK_VALUE(b[i][k] <= b[i][k + 1], "recis features: boundaries must be sorted, but ", b[i][k], " > ",
                        b[i][k + 1]);
  }
  return map_values<int64_t>(values, false, "bucketize", [&](int64_t i, auto v) {
    return static_cast<int64_t>(std::upper_bound(b[i], b[i] + nb[i], static_cast<double>(v)) - b[i]);
  });
}

std::vector<at::Tensor> feat_log1p(at::TensorList values, at::IntArrayRef mode) {
  feat::check_sizes(values.size(), {FEAT_ARG(mode)});
  for (int64_t m : mode) TORCH_CHECK_VALUE(m == 0 || m == 1, "recis features: unknown log1p mode ", m);
  const double* table = log1p_table();
  return map_values<double>(values, false, "log1p", [&](int64_t i, auto v) {
    if constexpr (std::is_integral_v<decltype(v)>) {
      const int64_t k = static_cast<int64_t>(v);
      if (k >= 0 && k < kLogTable) return table[k];
      if (k < 0 && k > -kLogTable) return mode[i] == 0 ? -table[-k] : 0.0;
    }
    const double x = static_cast<double>(v);
    if (x >= 0) return std::log1p(x);
    return mode[i] == 0 ? -std::log1p(-x) : (std::isnan(x) ? x : 0.0);
  });
}

std::vector<at::Tensor> feat_normalize(at::TensorList values, at::ArrayRef<double> mean, at::ArrayRef<double> std) {
  feat::check_sizes(values.size(), {FEAT_ARG(mean), FEAT_ARG(std)});
  return map_values<double>(values, false, "normalize",
                            [&](int64_t i, auto v) { return (static_cast<double>(v) - mean[i]) / std[i]; });
}

std::vector<at::Tensor> feat_clip(at::TensorList values, at::ArrayRef<double> lo, at::ArrayRef<double> hi) {
  feat::check_sizes(values.size(), {FEAT_ARG(lo), FEAT_ARG(hi)});
  return map_values<double>(values, false, "clip", [&](int64_t i, auto v) {
    const double x = static_cast<double>(v);
    return x < lo[i] ? lo[i] : (x > hi[i] ? hi[i] : x);
  });
}

std::vector<at::Tensor> feat_unpack_bits(at::TensorList bitmaps, at::IntArrayRef bit_offsets, at::IntArrayRef lengths) {
  feat::check_sizes(bitmaps.size(), {FEAT_ARG(bit_offsets), FEAT_ARG(lengths)});
  std::vector<int64_t> sizes(lengths.begin(), lengths.end());
  for (size_t i = 0; i < bitmaps.size(); ++i) {
    TORCH_CHECK_TYPE(bitmaps[i].scalar_type() == at::kByte, "recis features: a bitmap must be uint8, got ",
                     bitmaps[i].scalar_type());
    feat::check_cpu_1d(bitmaps[i], "bitmap");
    TORCH_CHECK_VALUE(bit_offsets[i] >= 0 && lengths[i] >= 0 && bit_offsets[i] + lengths[i] <= 8 * bitmaps[i].numel(),
                      "recis features: bits [", bit_offsets[i], ", ", bit_offsets[i] + lengths[i],
                      ") run past a bitmap of ", bitmaps[i].numel(), " bytes");
  }
  auto out = feat::pooled_outputs(sizes, at::kBool);
  GilRelease nogil;
  feat::for_chunks(feat::make_chunks(sizes, feat::kGrain), [&](const feat::Chunk& c) {
    const uint8_t* bits = bitmaps[c.item].data_ptr<uint8_t>();
    bool* dst = out[c.item].data_ptr<bool>();
    const int64_t off = bit_offsets[c.item];
    int64_t i = c.begin;
    for (; i < c.end && ((off + i) & 7); ++i) dst[i] = (bits[(off + i) >> 3] >> ((off + i) & 7)) & 1;
    for (; i + 8 <= c.end; i += 8) std::memcpy(dst + i, &kSpread[bits[(off + i) >> 3]], 8);  // a whole byte
    for (; i < c.end; ++i) dst[i] = (bits[(off + i) >> 3] >> ((off + i) & 7)) & 1;
  });
  return out;
}

}  // namespace recis

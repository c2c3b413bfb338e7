#include "hashtable/initializer.h"

#include <cmath>
#include <cstring>

#include "common/hashing.h"

namespace recis {
namespace {

constexpr int64_t kChunk = 16;

// The math below uses only +, *, bit casts and sqrt, so loops over it vectorize and give the
// same values on every platform (and in the GPU port) up to floating-point contraction.

// ln(u) for u in (0, 1]: u = m * 2^e with m in [1, 2), ln(m) = 2 atanh((m - 1) / (m + 1)).
inline float fast_log(float u) {
  const int32_t bits = __builtin_bit_cast(int32_t, u);
  const float e = static_cast<float>((bits >> 23) - 127);
  const float m = __builtin_bit_cast(float, (bits & 0x007FFFFF) | 0x3F800000);
  const float t = (m - 1.f) / (m + 1.f), t2 = t * t;
  const float p = 1.f + t2 * (1.f / 3 + t2 * (1.f / 5 + t2 * (1.f / 7 + t2 * (1.f / 9 + t2 * (1.f / 11)))));
  return e * 0.69314718056f + 2.f * t * p;
}

// cos(2 pi v) for v in [0, 1): quadrant reduction to |r| <= pi/4, then Taylor polynomials.
// Branch-free (selects, no floor call), so the caller's loop vectorizes.
inline float fast_cos_turns(float v) {
  const int32_t quadrant = static_cast<int32_t>(4.f * v + 0.5f);  // v >= 0: truncation is floor
  const float r = 6.283185307179586f * (v - 0.25f * static_cast<float>(quadrant));
  const float r2 = r * r;
  const float c = 1.f + r2 * (-0.5f + r2 * (1.f / 24 + r2 * (-1.f / 720 + r2 * (1.f / 40320))));
  const float s = r * (1.f + r2 * (-1.f / 6 + r2 * (1.f / 120 + r2 * (-1.f / 5040 + r2 * (1.f / 362880)))));
  // quadrant 0: c, 1: -s, 2: -c, 3: s
  const float mag = (quadrant & 1) ? s : c;
  return ((quadrant + 1) & 2) ? -mag : mag;
}

// Box-Muller (cosine branch) from two 24-bit uniforms of one counter value. The counters
// are drawn in a 64-bit loop and the floats computed in a 32-bit loop, so both vectorize.
void fill_normal(uint64_t key, uint64_t salt, int64_t j0, int64_t n, float* z) {
  int32_t hi[kChunk], mid[kChunk];
  for (int64_t k = 0; k < n; ++k) {
    const uint64_t r = mix64(key + kColumnStep * static_cast<uint64_t>(j0 + k + 1) + salt);
    hi[k] = static_cast<int32_t>(r >> 40);
    mid[k] = static_cast<int32_t>((r >> 16) & 0xFFFFFF);
  }
  for (int64_t k = 0; k < n; ++k) {
    const float u1 = (static_cast<float>(hi[k]) + 0.5f) * (1.0f / 16777216.0f);  // (0, 1)
    const float u2 = static_cast<float>(mid[k]) * (1.0f / 16777216.0f);          // [0, 1)
    z[k] = std::sqrt(-2.0f * fast_log(u1)) * fast_cos_turns(u2);
  }
}

}  // namespace

void fill_initial_row(const InitSpec& spec, uint64_t seed, int64_t id, float* dst, int64_t dim) {
  const uint64_t key = row_key(seed, id);
  switch (spec.kind) {
    case InitKind::kConstant:
      for (int64_t j = 0; j < dim; ++j) dst[j] = spec.a;
      return;
    case InitKind::kUniform: {
      const float lo = spec.a, span = spec.b - spec.a;
      for (int64_t j = 0; j < dim; ++j) {
        const int32_t bits = static_cast<int32_t>(mix64(key + kColumnStep * static_cast<uint64_t>(j + 1)) >> 40);
        dst[j] = lo + span * static_cast<float>(bits) * (1.0f / 16777216.0f);
      }
      return;
    }
    case InitKind::kNormal:
    case InitKind::kTruncatedNormal: {
      // Truncated: values outside +-c are redrawn with the next attempt's counter, so each value
      // stays a pure function of (seed, id, column). 32 misses in a row: probability < 1e-40 at c = 2.
      const bool truncate = spec.kind == InitKind::kTruncatedNormal;
      float z[kChunk];
      for (int64_t j0 = 0; j0 < dim; j0 += kChunk) {
        const int64_t n = dim - j0 < kChunk ? dim - j0 : kChunk;
        fill_normal(key, 0, j0, n, z);
        for (int64_t k = 0; k < n && truncate; ++k) {
          for (uint64_t attempt = 1; std::fabs(z[k]) > spec.c && attempt < 32; ++attempt)
            fill_normal(key, kAttemptStep * attempt, j0 + k, 1, &z[k]);
          if (std::fabs(z[k]) > spec.c) z[k] = std::copysign(spec.c, z[k]);
        }
        for (int64_t k = 0; k < n; ++k) dst[j0 + k] = spec.a + spec.b * z[k];
      }
      return;
    }
  }
}

}  // namespace recis

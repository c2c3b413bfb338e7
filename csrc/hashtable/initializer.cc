#include "hashtable/initializer.h"

#include <cmath>

#include "common/hashing.h"

namespace recis {
namespace {

constexpr uint64_t kColumnStep = 0xD1B54A32D192ED03ULL;
constexpr uint64_t kAttemptStep = 0xAEF17502108EF2D9ULL;
constexpr float kTwoPi = 6.283185307179586f;

inline uint64_t row_key(uint64_t seed, int64_t id) {
  return mix64(mix64(seed ^ 0x243F6A8885A308D3ULL) ^ static_cast<uint64_t>(id));
}

// Uniform in (0, 1) from the top 24 bits; never 0 so log() is finite.
inline float open_unit(uint64_t r) { return (static_cast<float>(r >> 40) + 0.5f) * (1.0f / 16777216.0f); }
// Uniform in [0, 1) from the next 24 bits.
inline float half_open_unit(uint64_t r) { return static_cast<float>((r >> 16) & 0xFFFFFF) * (1.0f / 16777216.0f); }

// One standard normal per counter value (Box-Muller, cosine branch).
inline float standard_normal(uint64_t r) {
  return std::sqrt(-2.0f * std::log(open_unit(r))) * std::cos(kTwoPi * half_open_unit(r));
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
        const uint64_t r = mix64(key + kColumnStep * static_cast<uint64_t>(j + 1));
        dst[j] = lo + span * static_cast<float>(r >> 40) * (1.0f / 16777216.0f);
      }
      return;
    }
    case InitKind::kNormal:
      for (int64_t j = 0; j < dim; ++j) {
        const uint64_t r = mix64(key + kColumnStep * static_cast<uint64_t>(j + 1));
        dst[j] = spec.a + spec.b * standard_normal(r);
      }
      return;
    case InitKind::kTruncatedNormal:
      for (int64_t j = 0; j < dim; ++j) {
        const uint64_t base = key + kColumnStep * static_cast<uint64_t>(j + 1);
        float z = 0.f;
        // Resample outside +-c; each attempt uses its own counter, so the result stays a pure
        // function of (seed, id, column). 32 misses in a row has probability < 1e-40 at c = 2.
        for (uint64_t attempt = 0; attempt < 32; ++attempt) {
          z = standard_normal(mix64(base + kAttemptStep * attempt));
          if (std::fabs(z) <= spec.c) break;
        }
        if (std::fabs(z) > spec.c) z = std::copysign(spec.c, z);
        dst[j] = spec.a + spec.b * z;
      }
      return;
  }
}

}  // namespace recis

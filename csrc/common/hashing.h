// Stable 64-bit mixing functions and constants shared by the id map, the initializer and the
// sketch. recis/hashing.py (Python), recis/gpu/kernels/hashing.py (Triton) and this file compute
// the same values; tests/hash_vectors.json pins them, and recis._C.vocabulary() exports the constants.
#pragma once
#include <cstdint>

namespace recis {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;  // splitmix64's increment
constexpr uint64_t kMix1 = 0xBF58476D1CE4E5B9ULL;    // splitmix64's finalizer multipliers
constexpr uint64_t kMix2 = 0x94D049BB133111EBULL;
constexpr uint64_t kSeedSalt = 0x243F6A8885A308D3ULL;    // a table seed's salt in the row key
constexpr uint64_t kColumnStep = 0xD1B54A32D192ED03ULL;  // initializer counter step per column
constexpr uint64_t kAttemptStep = 0xAEF17502108EF2D9ULL; // initializer counter step per redraw

// splitmix64 finalizer: a bijection on 64-bit values with full avalanche.
inline uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= kMix1;
  x ^= x >> 27;
  x *= kMix2;
  x ^= x >> 31;
  return x;
}

// Hash of an id inside namespace `ns`; every int64 value is a valid id.
inline uint64_t hash_id(int64_t id, uint32_t ns) {
  return mix64(static_cast<uint64_t>(id) + kGolden * (static_cast<uint64_t>(ns) + 1));
}

// The key of an id's initial row in a namespace with `seed`.
inline uint64_t row_key(uint64_t seed, int64_t id) { return mix64(mix64(seed ^ kSeedSalt) ^ static_cast<uint64_t>(id)); }

// Maps a 64-bit hash uniformly onto [0, n) without a modulo (Lemire's multiply-shift).
inline uint64_t reduce_range(uint64_t h, uint64_t n) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(h) * n) >> 64);
}

}  // namespace recis

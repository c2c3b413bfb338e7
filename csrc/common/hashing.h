// Stable 64-bit mixing functions shared by the id map, the initializer and the sketch.
#pragma once
#include <cstdint>

namespace recis {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

// splitmix64 finalizer: a bijection on 64-bit values with full avalanche.
inline uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  x ^= x >> 31;
  return x;
}

// Hash of an id inside namespace `ns`; every int64 value is a valid id.
inline uint64_t hash_id(int64_t id, uint32_t ns) {
  return mix64(static_cast<uint64_t>(id) + kGolden * (static_cast<uint64_t>(ns) + 1));
}

// Maps a 64-bit hash uniformly onto [0, n) without a modulo (Lemire's multiply-shift).
inline uint64_t reduce_range(uint64_t h, uint64_t n) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(h) * n) >> 64);
}

}  // namespace recis

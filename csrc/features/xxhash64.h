// XXH64, the published xxHash 64-bit algorithm (https://github.com/Cyan4973/xxHash, doc/xxhash_spec.md),
// implemented here: stable across runs, processes and platforms (input bytes are read little-endian).
#pragma once
#include <cstdint>
#include <cstring>

namespace recis {
namespace xxh {

constexpr uint64_t P1 = 0x9E3779B185EBCA87ULL;
constexpr uint64_t P2 = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t P3 = 0x165667B19E3779F9ULL;
constexpr uint64_t P4 = 0x85EBCA77C2B2AE63ULL;
constexpr uint64_t P5 = 0x27D4EB2F165667C5ULL;

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// A little-endian uint64_t or uint32_t at p (any alignment).
template <class T>
inline T read_le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  if constexpr (sizeof(T) == 8) v = __builtin_bswap64(v);
  else v = __builtin_bswap32(v);
#endif
  return v;
}

inline uint64_t round(uint64_t acc, uint64_t input) { return rotl(acc + input * P2, 31) * P1; }

inline uint64_t merge_round(uint64_t acc, uint64_t val) { return (acc ^ round(0, val)) * P1 + P4; }

inline uint64_t avalanche(uint64_t h) {
  h ^= h >> 33;
  h *= P2;
  h ^= h >> 29;
  h *= P3;
  h ^= h >> 32;
  return h;
}

}  // namespace xxh

// XXH64 of `len` bytes at `data`.
inline uint64_t xxh64(const void* data, uint64_t len, uint64_t seed) {
  using namespace xxh;
  const uint8_t* p = static_cast<const uint8_t*>(data);
  const uint8_t* const end = p + len;
  uint64_t h;
  if (len >= 32) {
    uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
    const uint8_t* const limit = end - 32;
    do {
      v1 = round(v1, read_le<uint64_t>(p));
      v2 = round(v2, read_le<uint64_t>(p + 8));
      v3 = round(v3, read_le<uint64_t>(p + 16));
      v4 = round(v4, read_le<uint64_t>(p + 24));
      p += 32;
    } while (p <= limit);
    h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
    h = merge_round(h, v1);
    h = merge_round(h, v2);
    h = merge_round(h, v3);
    h = merge_round(h, v4);
  } else {
    h = seed + P5;
  }
  h += len;
  for (; p + 8 <= end; p += 8) h = rotl(h ^ round(0, read_le<uint64_t>(p)), 27) * P1 + P4;
  if (p + 4 <= end) {
    h = rotl(h ^ (static_cast<uint64_t>(read_le<uint32_t>(p)) * P1), 23) * P2 + P3;
    p += 4;
  }
  for (; p < end; ++p) h = rotl(h ^ (static_cast<uint64_t>(*p) * P5), 11) * P1;
  return avalanche(h);
}

// XXH64 of the 8 little-endian bytes of v: the same value as xxh64(&le_bytes, 8, seed).
inline uint64_t xxh64_u64(uint64_t v, uint64_t seed) {
  using namespace xxh;
  const uint64_t h = seed + P5 + 8;
  return avalanche(rotl(h ^ round(0, v), 27) * P1 + P4);
}

}  // namespace recis

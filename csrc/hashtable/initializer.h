// Deterministic per-id row initialization: values are a pure function of (seed, id, column).
#pragma once
#include <cstdint>
#include <utility>

namespace recis {

enum class InitKind : int32_t { kConstant = 0, kUniform = 1, kNormal = 2, kTruncatedNormal = 3 };
inline constexpr std::pair<const char*, InitKind> kInitKindNames[] = {  // recis.vocabulary.INIT_KINDS
    {"constant", InitKind::kConstant}, {"uniform", InitKind::kUniform}, {"normal", InitKind::kNormal},
    {"truncated_normal", InitKind::kTruncatedNormal}};

// Parameters per kind: constant(a); uniform [a, b); normal(mean a, std b);
// truncated normal(mean a, std b) cut at mean +- c * std.
struct InitSpec {
  InitKind kind = InitKind::kConstant;
  float a = 0.f, b = 0.f, c = 2.f;
};

// Writes `dim` initial values for `id` into `dst`. Counter-based (splitmix64 over
// (seed, id, column, attempt)): independent of insertion order, threads and sharding.
void fill_initial_row(const InitSpec& spec, uint64_t seed, int64_t id, float* dst, int64_t dim);

}  // namespace recis

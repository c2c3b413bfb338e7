// A float sum in a fixed order that vectorizes.
#pragma once
#include <cstdint>

namespace recis {

// Sums term(j) over j in [0, n) in Lanes lanes: term j adds to lane j % Lanes, in order of j,
// and then the lanes add up in lane order. The lanes are independent chains, so the sum
// vectorizes without reassociating float math (-ffp-contract=off keeps it exact), and a Triton
// kernel that sums the same way agrees bit for bit.
template <int64_t Lanes, class Term>
inline float lane_sum(int64_t n, Term&& term) {
  float lane[Lanes] = {0.f};
  int64_t j = 0;
  for (; j + Lanes <= n; j += Lanes)
    for (int64_t l = 0; l < Lanes; ++l) lane[l] += term(j + l);
  for (; j < n; ++j) lane[j % Lanes] += term(j);
  float sum = 0.f;
  for (int64_t l = 0; l < Lanes; ++l) sum += lane[l];
  return sum;
}

}  // namespace recis

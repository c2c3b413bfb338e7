// Feature hashing ops (CPU kernels): XXH64 of strings and integers, and crosses. Each op takes
// a list of columns and runs them all in one call, in parallel over columns and rows.
#pragma once
#include <ATen/ATen.h>

#include <tuple>
#include <vector>

namespace recis {

// Column i: strings [offsets[s], offsets[s+1]) of data (Arrow utf8 / large_utf8 buffers);
// position p hashes string index[p] (or p without an index); masked-out positions give 0.
// Output: int64 [positions * num_hashes[i]], the j-th hash of a value seeded with seeds[i] + j.
std::vector<at::Tensor> feat_hash_str(at::TensorList offsets, at::TensorList data,
                                      const c10::List<c10::optional<at::Tensor>>& index,
                                      const c10::List<c10::optional<at::Tensor>>& mask, at::IntArrayRef seeds,
                                      at::IntArrayRef num_hashes);
// XXH64 of each integer's int64 value as 8 little-endian bytes; same layout as feat_hash_str.
std::vector<at::Tensor> feat_hash_int(at::TensorList values, at::IntArrayRef seeds, at::IntArrayRef num_hashes);
// Feature f crosses inputs [sum(arity[:f]), sum(arity[:f+1])): per row, the cartesian product of
// the inputs' bags (first input varying slowest), at most cap[f] ids, each the XXH64 of the ids'
// little-endian bytes concatenated. Returns (values, lengths, offsets, ids cut by the cap [F, 1]).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> feat_cross(at::TensorList values,
                                                                      const c10::List<c10::optional<at::Tensor>>& splits,
                                                                      at::IntArrayRef arity, at::IntArrayRef cap,
                                                                      at::IntArrayRef seeds, int64_t rows);

// out[i] = whether a[i] and b[i] hold the same bytes (any dtypes; contiguous). One call compares
// many pairs in parallel: the engine's check that a column's dictionary did not change.
at::Tensor feat_same_bytes(at::TensorList a, at::TensorList b);

}  // namespace recis

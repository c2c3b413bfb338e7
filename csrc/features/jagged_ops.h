// Jagged feature ops (CPU kernels): gather columns into a KeyedJaggedTensor layout or a dense
// [rows, F] matrix, and truncate / pad sequences. One call handles all columns.
#pragma once
#include <ATen/ATen.h>

#include <tuple>
#include <vector>

namespace recis {

using OptTensors = c10::List<c10::optional<at::Tensor>>;

// Column f: `values[f]` holds entries of widths[f] int64 ids; position p reads entry index[f][p]
// (or p); row r covers positions [splits[f][r], splits[f][r+1]) (or just r). A position whose
// mask is false takes fill[f] (widths[f] ids) or, without a fill, is dropped.
// Returns the KeyedJaggedTensor (values, lengths, offsets) over all columns, column-major.
std::tuple<at::Tensor, at::Tensor, at::Tensor> feat_assemble_sparse(at::TensorList values, at::IntArrayRef widths,
                                                                    const OptTensors& index, const OptTensors& mask,
                                                                    const OptTensors& fill, const OptTensors& splits,
                                                                    int64_t rows);
// One value per row and column (any numeric dtype, read through index when given; a masked-out
// row takes fill[f], a float64 scalar, which must be given then). Returns float32 [rows, F].
at::Tensor feat_assemble_dense(at::TensorList values, const OptTensors& index, const OptTensors& mask,
                               const OptTensors& fill, int64_t rows);
// Keeps the first (keep_last = 0) or last max_len ids of each row; with pad[f] != 0, shorter
// rows are filled up to max_len with pad_value[f] after their ids.
// Returns (values, lengths, offsets, counters [F, 2] = ids cut, pad ids added).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> feat_truncate(at::TensorList values, const OptTensors& splits,
                                                                         at::IntArrayRef max_len,
                                                                         at::IntArrayRef keep_last,
                                                                         at::IntArrayRef pad_value, at::IntArrayRef pad,
                                                                         int64_t rows);

}  // namespace recis

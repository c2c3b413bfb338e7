// Elementwise feature ops (CPU kernels) over lists of columns, one call for all of them:
// ids (mod, bucketize) and dense values (log1p, normalize, clip; computed in float64).
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace recis {

// Floor modulo (Python's %): int64 results in [0, n[i]) for integer columns.
std::vector<at::Tensor> feat_mod(at::TensorList values, at::IntArrayRef n);
// Index of the first boundary > value (numpy.searchsorted side='right'); NaN goes last. int64.
std::vector<at::Tensor> feat_bucketize(at::TensorList values, at::TensorList boundaries);
// log1p; negatives per mode[i]: 0 = sign(x) * log1p(|x|), 1 = log1p(max(x, 0)). float64.
std::vector<at::Tensor> feat_log1p(at::TensorList values, at::IntArrayRef mode);
// (x - mean[i]) / std[i]. float64.
std::vector<at::Tensor> feat_normalize(at::TensorList values, at::ArrayRef<double> mean, at::ArrayRef<double> std);
// min(max(x, lo[i]), hi[i]); NaN stays NaN. float64.
std::vector<at::Tensor> feat_clip(at::TensorList values, at::ArrayRef<double> lo, at::ArrayRef<double> hi);

// Arrow validity bitmaps as bool tensors: bits [bit_offsets[i], bit_offsets[i] + lengths[i]) of
// bitmaps[i] (uint8, least significant bit first), one call for all columns.
std::vector<at::Tensor> feat_unpack_bits(at::TensorList bitmaps, at::IntArrayRef bit_offsets, at::IntArrayRef lengths);

}  // namespace recis

// Output tensors whose storage is reused once nobody references it any more, so a stream of
// steps or batches does not fault in fresh pages for every (often tens of MB) output.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/strides.h>

#include <vector>

namespace recis {

class StoragePool {
 public:
  explicit StoragePool(size_t capacity) : capacity_(capacity) {}

  // A fresh contiguous tensor of `shape`; its storage may be one handed out before (only when
  // that one has no other user, and is at most about twice the size needed).
  at::Tensor empty(at::IntArrayRef shape, at::ScalarType dtype) {
    const auto opts = at::TensorOptions().dtype(dtype);
    int64_t numel = 1;
    for (int64_t s : shape) numel *= s;
    const size_t need = static_cast<size_t>(numel) * c10::elementSize(dtype);
    for (auto& st : pool_)
      if (st.use_count() == 1 && st.nbytes() >= need && st.nbytes() <= 2 * need + 4096)
        return at::empty({0}, opts).set_(st, 0, shape, c10::contiguous_strides(shape));
    at::Tensor fresh = at::empty(shape, opts);
    if (pool_.size() < capacity_) {
      pool_.push_back(fresh.storage());
    } else {
      for (auto& st : pool_)
        if (st.use_count() == 1) {
          st = fresh.storage();
          break;
        }
    }
    return fresh;
  }

 private:
  size_t capacity_;
  std::vector<c10::Storage> pool_;
};

}  // namespace recis

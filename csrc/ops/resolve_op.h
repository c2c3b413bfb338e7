// recis::resolve: find-or-insert of distinct (namespace, id) keys with their occurrence counts,
// the owner's half of a sharded lookup. Schema in bind.cpp.
#pragma once
#include <ATen/ATen.h>

namespace recis {

at::Tensor resolve(at::Tensor& token, int64_t handle, const at::Tensor& ns, const at::Tensor& ids,
                   const at::Tensor& counts, int64_t mode);

}  // namespace recis

#include "hashtable/row_store.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>

namespace recis {
namespace {
constexpr size_t kHugePage = size_t(2) << 20;
size_t stride_for(int64_t dim, int64_t slot_width) {
  return sizeof(RowMeta) + sizeof(float) * static_cast<size_t>(dim + slot_width);
}
}  // namespace

RowStore::RowStore(int64_t dim, int64_t slot_width)
    : dim_(dim), slot_width_(slot_width), stride_(stride_for(dim, slot_width)) {}

RowStore::~RowStore() { free_blocks(); }

char* RowStore::new_block() const {
  const size_t bytes = stride_ * kBlockRows;
  void* p = nullptr;
  if (posix_memalign(&p, kHugePage, bytes) != 0) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  // Long-lived rows benefit from 2 MiB pages (fewer TLB misses on random row access).
  madvise(p, bytes, MADV_HUGEPAGE);
#endif
  return static_cast<char*>(p);
}

void RowStore::free_blocks() {
  for (char* b : blocks_) std::free(b);
  blocks_.clear();
}

uint32_t RowStore::allocate() {
  if (!free_.empty()) {
    const uint32_t r = free_.back();
    free_.pop_back();
    return r;
  }
  if (high_water_ >= kMaxRows) throw std::length_error("recis: a table holds at most 2^32 - 2 rows per process");
  if ((high_water_ >> kBlockShift) >= blocks_.size()) blocks_.push_back(new_block());
  return high_water_++;
}

void RowStore::relayout(int64_t slot_width, const std::vector<float>& slot_init) {
  if (slot_width == slot_width_) return;
  RowStore next(dim_, slot_width);
  for (uint32_t b = 0; b < blocks_.size(); ++b) next.blocks_.push_back(next.new_block());
  const size_t keep = sizeof(RowMeta) + sizeof(float) * static_cast<size_t>(dim_);
  for (uint32_t r = 0; r < high_water_; ++r) {
    std::memcpy(next.row(r), row(r), keep);
    float* s = next.slots(r);
    for (int64_t j = 0; j < slot_width; ++j) s[j] = slot_init[j];
  }
  free_blocks();
  blocks_.swap(next.blocks_);
  slot_width_ = slot_width;
  stride_ = next.stride_;
}

void RowStore::clear() {
  free_blocks();
  high_water_ = 0;
  free_.clear();
  free_.shrink_to_fit();
}

size_t RowStore::memory_bytes() const {
  // Pages past the high-water row are never touched, so they hold no memory.
  return static_cast<size_t>(high_water_) * stride_ + free_.capacity() * sizeof(uint32_t) +
         blocks_.capacity() * sizeof(char*);
}

}  // namespace recis

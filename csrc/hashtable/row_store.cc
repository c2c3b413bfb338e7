#include "hashtable/row_store.h"

#include <sys/mman.h>

#include <algorithm>
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

// Blocks are mapped directly (not from the malloc heap), so freed blocks go back to the OS
// at once, and are 2 MiB aligned so that the kernel can back them with huge pages.
char* RowStore::new_block() const {
  const size_t bytes = block_bytes();
  const size_t span = bytes + kHugePage;
  void* p = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  const uintptr_t base = reinterpret_cast<uintptr_t>(p);
  const uintptr_t aligned = (base + kHugePage - 1) & ~(uintptr_t(kHugePage) - 1);
  if (aligned > base) munmap(p, aligned - base);
  const uintptr_t end = base + span, used_end = aligned + bytes;
  if (end > used_end) munmap(reinterpret_cast<void*>(used_end), end - used_end);
#ifdef MADV_HUGEPAGE
  // Long-lived rows benefit from 2 MiB pages (fewer TLB misses on random row access).
  madvise(reinterpret_cast<void*>(aligned), bytes, MADV_HUGEPAGE);
#endif
  return reinterpret_cast<char*>(aligned);
}

void RowStore::free_block(char* b) const {
  if (b) munmap(b, block_bytes());
}

void RowStore::free_blocks() {
  for (char* b : blocks_) free_block(b);
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
  // Block by block (a block keeps the same rows at any stride), so the peak is one extra block.
  RowStore next(dim_, slot_width);
  const size_t keep = sizeof(RowMeta) + sizeof(float) * static_cast<size_t>(dim_);
  for (size_t b = 0; b < blocks_.size(); ++b) {
    next.blocks_.push_back(next.new_block());
    const uint32_t first = static_cast<uint32_t>(b) << kBlockShift;
    const uint32_t last = std::min<uint32_t>(high_water_, first + kBlockRows);
    for (uint32_t r = first; r < last; ++r) {
      std::memcpy(next.row(r), row(r), keep);
      float* s = next.slots(r);
      for (int64_t j = 0; j < slot_width; ++j) s[j] = slot_init[j];
    }
    free_block(blocks_[b]);
    blocks_[b] = nullptr;
  }
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

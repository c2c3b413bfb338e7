#include "hashtable/row_store.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <new>
#include <stdexcept>

namespace recis {
namespace {

constexpr size_t kHugePage = size_t(2) << 20;

// Arrays are mapped directly (not from the malloc heap), so freed blocks go back to the OS at
// once; large ones are 2 MiB aligned and advised to use huge pages (fewer TLB misses on
// random row access).
void* map_array(size_t bytes) {
  if (bytes == 0) return nullptr;
  const size_t align = bytes >= kHugePage ? kHugePage : 64;
  const size_t span = bytes + align;
  void* p = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  const uintptr_t base = reinterpret_cast<uintptr_t>(p);
  const uintptr_t aligned = (base + align - 1) & ~(uintptr_t(align) - 1);
  const uintptr_t page = 4096;
  const uintptr_t head = aligned & ~(page - 1);
  if (head > base) munmap(p, head - base);
  const uintptr_t used_end = (aligned + bytes + page - 1) & ~(page - 1), end = base + span;
  if (end > used_end) munmap(reinterpret_cast<void*>(used_end), end - used_end);
#ifdef MADV_HUGEPAGE
  if (align == kHugePage) madvise(reinterpret_cast<void*>(aligned), bytes, MADV_HUGEPAGE);
#endif
  return reinterpret_cast<void*>(aligned);
}

void unmap_array(void* p, size_t bytes) {
  if (!p || bytes == 0) return;
  const uintptr_t page = 4096, a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t head = a & ~(page - 1);
  munmap(reinterpret_cast<void*>(head), (a + bytes - head + page - 1) & ~(page - 1));
}

size_t array_bytes(int64_t width) { return sizeof(float) * static_cast<size_t>(width) * RowStore::kBlockRows; }

}  // namespace

RowStore::RowStore(int64_t dim, int64_t slot_width) : dim_(dim), slot_width_(slot_width) {}

RowStore::~RowStore() { free_blocks(); }

void RowStore::add_block() {
  Block b;
  b.meta = static_cast<RowMeta*>(map_array(sizeof(RowMeta) * kBlockRows));
  b.emb = static_cast<float*>(map_array(array_bytes(dim_)));
  b.slots = static_cast<float*>(map_array(array_bytes(slot_width_)));
  blocks_.push_back(b);
}

void RowStore::free_blocks() {
  for (const Block& b : blocks_) {
    unmap_array(b.meta, sizeof(RowMeta) * kBlockRows);
    unmap_array(b.emb, array_bytes(dim_));
    unmap_array(b.slots, array_bytes(slot_width_));
  }
  blocks_.clear();
}

void RowStore::allocate(int64_t n, uint32_t* out) {
  int64_t k = 0;
  for (; k < n && !free_.empty(); ++k) {
    out[k] = free_.back();
    free_.pop_back();
  }
  if (static_cast<uint64_t>(high_water_) + (n - k) > kMaxRows)
    throw std::length_error("recis: a table holds at most 2^32 - 2 rows per process");
  const uint64_t end = static_cast<uint64_t>(high_water_) + (n - k);
  while (static_cast<uint64_t>(blocks_.size()) * kBlockRows < end) add_block();
  for (; k < n; ++k) out[k] = high_water_++;
}

void RowStore::reserve(uint32_t n) {
  const uint64_t want = static_cast<uint64_t>(high_water_) + n;
  while (static_cast<uint64_t>(blocks_.size()) * kBlockRows < want) {
    add_block();
    const Block& b = blocks_.back();  // touch the pages now rather than on the hot path
    std::memset(b.meta, 0, sizeof(RowMeta) * kBlockRows);
    std::memset(b.emb, 0, array_bytes(dim_));
    if (slot_width_) std::memset(b.slots, 0, array_bytes(slot_width_));
  }
}

void RowStore::relayout(int64_t slot_width, const std::vector<float>& slot_init) {
  if (slot_width == slot_width_) return;
  for (size_t bi = 0; bi < blocks_.size(); ++bi) {
    Block& b = blocks_[bi];
    unmap_array(b.slots, array_bytes(slot_width_));
    b.slots = static_cast<float*>(map_array(array_bytes(slot_width)));
    const uint32_t rows = std::min<uint32_t>(kBlockRows, high_water_ - static_cast<uint32_t>(bi) * kBlockRows);
    for (uint32_t r = 0; r < rows; ++r)
      std::copy(slot_init.begin(), slot_init.end(), b.slots + static_cast<size_t>(r) * slot_width);
  }
  slot_width_ = slot_width;
}

void RowStore::clear() {
  free_blocks();
  high_water_ = 0;
  free_.clear();
  free_.shrink_to_fit();
}

void RowStore::protect_rows(bool no_access) const {
  const int prot = no_access ? PROT_NONE : PROT_READ | PROT_WRITE;
  auto apply = [&](const void* p, size_t bytes) {
    if (!p || bytes == 0) return;
    const uintptr_t page = 4096, a = reinterpret_cast<uintptr_t>(p);
    const uintptr_t head = a & ~(page - 1);
    mprotect(reinterpret_cast<void*>(head), (a + bytes - head + page - 1) & ~(page - 1), prot);
  };
  for (const Block& b : blocks_) {
    apply(b.meta, sizeof(RowMeta) * kBlockRows);
    apply(b.emb, array_bytes(dim_));
    apply(b.slots, array_bytes(slot_width_));
  }
}

size_t RowStore::memory_bytes() const {
  // Pages past the high-water row are never touched, so they hold no memory.
  return static_cast<size_t>(high_water_) * row_bytes() + free_.capacity() * sizeof(uint32_t) +
         blocks_.capacity() * sizeof(Block);
}

}  // namespace recis

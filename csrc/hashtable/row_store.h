// Row storage in blocks: per row a metadata record, the embedding and the optimizer slots.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace recis {

// 4 bytes of metadata per row (the id and the last_seen stamp live in the id map's slot).
struct RowMeta {
  uint32_t count;  // sightings since insertion (saturating)
};

// Rows live in fixed-size blocks that never move, so row pointers stay valid while the
// store grows. Each block holds three arrays (metadata, embeddings, slots): embeddings of
// 16-float multiples start on cache lines, so a lookup reads dim/16 lines and nothing else.
// Freed rows go to a free list and are reused before the store grows.
class RowStore {
 public:
  static constexpr int kBlockShift = 14;  // 16384 rows per block
  static constexpr uint32_t kBlockRows = 1u << kBlockShift;
  static constexpr uint32_t kMaxRows = 0xFFFFFFFEu;

  RowStore(int64_t dim, int64_t slot_width);
  ~RowStore();
  RowStore(const RowStore&) = delete;
  RowStore& operator=(const RowStore&) = delete;

  int64_t dim() const { return dim_; }
  int64_t slot_width() const { return slot_width_; }
  size_t row_bytes() const { return sizeof(RowMeta) + sizeof(float) * static_cast<size_t>(dim_ + slot_width_); }

  RowMeta* meta(uint32_t r) const { return blocks_[r >> kBlockShift].meta + (r & kMask); }
  float* emb(uint32_t r) const { return blocks_[r >> kBlockShift].emb + static_cast<size_t>(r & kMask) * dim_; }
  float* slots(uint32_t r) const {
    return blocks_[r >> kBlockShift].slots + static_cast<size_t>(r & kMask) * slot_width_;
  }

  // Allocates n rows (free list first, then fresh rows) into out[0..n). Their contents are
  // undefined; the caller initializes them.
  void allocate(int64_t n, uint32_t* out);
  void release(uint32_t r) { free_.push_back(r); }
  uint32_t high_water() const { return high_water_; }

  // Allocates and pre-faults blocks so that `n` more rows need no new memory.
  void reserve(uint32_t n);
  // Changes the slot width, keeping metadata and embeddings; every row's slots get `slot_init`.
  void relayout(int64_t slot_width, const std::vector<float>& slot_init);
  void clear();
  size_t memory_bytes() const;
  // Test hook: makes every block's arrays unreadable (or readable again), so that a pass that
  // must not touch the rows faults if it does.
  void protect_rows(bool no_access) const;

 private:
  static constexpr uint32_t kMask = kBlockRows - 1;
  struct Block {
    RowMeta* meta;
    float* emb;
    float* slots;
  };
  void add_block();
  void free_blocks();

  int64_t dim_, slot_width_;
  std::vector<Block> blocks_;
  uint32_t high_water_ = 0;
  std::vector<uint32_t> free_;
};

}  // namespace recis

// Row storage in blocks: per row a metadata header, the embedding and the optimizer slots.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace recis {

// 16 bytes of metadata at the head of every row.
struct RowMeta {
  int64_t id;          // the full 64-bit id that owns the row
  uint32_t count;      // sightings since insertion (saturating)
  uint32_t last_seen;  // table step of the last training lookup
};

// Rows live in fixed-size blocks that never move, so row pointers stay valid while the
// store grows. Freed rows go to a free list and are reused before the store grows.
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
  size_t stride_bytes() const { return stride_; }

  char* row(uint32_t r) const { return blocks_[r >> kBlockShift] + static_cast<size_t>(r & (kBlockRows - 1)) * stride_; }
  RowMeta* meta(uint32_t r) const { return reinterpret_cast<RowMeta*>(row(r)); }
  float* emb(uint32_t r) const { return reinterpret_cast<float*>(row(r) + sizeof(RowMeta)); }
  float* slots(uint32_t r) const { return emb(r) + dim_; }

  // Returns a row index whose contents are undefined; the caller initializes it.
  uint32_t allocate();
  void release(uint32_t r) { free_.push_back(r); }
  uint32_t live_rows() const { return high_water_ - static_cast<uint32_t>(free_.size()); }
  uint32_t high_water() const { return high_water_; }

  // Changes the slot width, keeping metadata and embeddings; new slots get `slot_init`.
  void relayout(int64_t slot_width, const std::vector<float>& slot_init);
  void clear();
  size_t memory_bytes() const;

 private:
  size_t block_bytes() const { return stride_ * kBlockRows; }
  char* new_block() const;
  void free_block(char* b) const;
  void free_blocks();

  int64_t dim_, slot_width_;
  size_t stride_;
  std::vector<char*> blocks_;
  uint32_t high_water_ = 0;
  std::vector<uint32_t> free_;
};

}  // namespace recis

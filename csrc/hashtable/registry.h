// Integer handles for tables, so torch ops can name a table in their schema.
#pragma once
#include <cstdint>
#include <memory>

#include "hashtable/hash_table.h"

namespace recis {

int64_t register_table(const std::shared_ptr<HashTable>& table);
// Throws a clear error when the handle is unknown or its table has been released.
std::shared_ptr<HashTable> table_from_handle(int64_t handle);

}  // namespace recis

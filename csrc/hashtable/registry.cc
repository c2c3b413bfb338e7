#include "hashtable/registry.h"

#include <c10/util/Exception.h>

#include <mutex>
#include <unordered_map>

namespace recis {
namespace {
std::mutex g_mu;
std::unordered_map<int64_t, std::weak_ptr<HashTable>> g_tables;
int64_t g_next = 1;
}  // namespace

int64_t register_table(const std::shared_ptr<HashTable>& table) {
  std::lock_guard<std::mutex> lock(g_mu);
  for (auto it = g_tables.begin(); it != g_tables.end();) it = it->second.expired() ? g_tables.erase(it) : ++it;
  g_tables.emplace(g_next, table);
  return g_next++;
}

std::shared_ptr<HashTable> table_from_handle(int64_t handle) {
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = g_tables.find(handle);
  TORCH_CHECK_VALUE(it != g_tables.end(), "recis: unknown table handle ", handle);
  auto t = it->second.lock();
  TORCH_CHECK_VALUE(t != nullptr, "recis: table handle ", handle, " refers to a table that was released");
  return t;
}

}  // namespace recis

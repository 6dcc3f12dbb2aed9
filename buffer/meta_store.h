// Free-form keys for the components around the pipeline: delivery's batch
// records and dead letters, the assembler's set-aside traces, the schema
// version; namespaced by a prefix per owner. Implemented by Store.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "buffer/status.h"

namespace sidetrace::buffer {

// Thread safety: every method may be called from any thread. Writes are
// durable as Outbox::ack_outbox()'s are.
class MetaStore {
 public:
  virtual ~MetaStore() = default;

  virtual Status meta_put(std::string_view key, std::string_view value) = 0;
  virtual Status meta_get(std::string_view key, std::string* value) = 0;  // NotFound if absent
  virtual Status meta_delete(std::string_view key) = 0;
  // Every key starting with `prefix`, in key order, at most `limit`.
  virtual Status meta_scan(std::string_view prefix, size_t limit,
                           std::vector<std::pair<std::string, std::string>>* out) = 0;
  // One page of that: the keys starting with `prefix` that sort after
  // `after` (all of them when `after` is empty), at most `limit`.
  virtual Status meta_scan_after(std::string_view prefix, std::string_view after, size_t limit,
                                 std::vector<std::pair<std::string, std::string>>* out) = 0;
  // Puts and deletes in one atomic write.
  struct MetaWrite {
    std::vector<std::pair<std::string, std::string>> put;
    std::vector<std::string> del;
  };
  virtual Status meta_write(const MetaWrite& w) = 0;
};

}  // namespace sidetrace::buffer

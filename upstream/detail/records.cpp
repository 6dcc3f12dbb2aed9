#include "upstream/detail/records.h"

#include <fmt/format.h>

#include <atomic>
#include <charconv>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>

namespace sidetrace::upstream::detail {

using nlohmann::json;

std::string batch_meta_key(uint64_t id) {
  return fmt::format("{}{:016x}", kBatchPrefix, id);
}

std::string encode_batch(const BatchRecord& r) {
  json j;
  j["key"] = r.key;
  j["seqs"] = r.seqs;
  j["trace_ids"] = r.trace_ids;
  if (!r.docs.empty()) j["docs"] = r.docs;
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

bool decode_batch(std::string_view key, std::string_view value, BatchRecord* r) {
  if (!key.starts_with(kBatchPrefix)) return false;
  std::string_view hex = key.substr(kBatchPrefix.size());
  auto [p, ec] = std::from_chars(hex.data(), hex.data() + hex.size(), r->id, 16);
  if (ec != std::errc() || p != hex.data() + hex.size()) return false;
  json j = json::parse(value, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return false;
  try {
    r->key = j.at("key").get<std::string>();
    r->seqs = j.at("seqs").get<std::vector<uint64_t>>();
    r->trace_ids = j.at("trace_ids").get<std::vector<std::string>>();
    r->docs.clear();
    if (j.contains("docs")) r->docs = j["docs"].get<std::vector<std::string>>();
  } catch (const json::exception&) {
    return false;
  }
  if (r->is_inline() ? r->docs.size() != r->trace_ids.size()
                     : r->seqs.size() != r->trace_ids.size()) {
    return false;
  }
  return !r->trace_ids.empty();
}

std::string encode_deadletter(const DeadLetterRecord& r) {
  json j;
  j["ts_ns"] = r.ts_ns;
  j["status"] = r.http_status;
  j["reason"] = r.reason;
  j["key"] = r.key;
  j["trace_ids"] = r.trace_ids;
  j["docs"] = r.docs;
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

bool decode_deadletter(std::string_view value, DeadLetterRecord* r) {
  json j = json::parse(value, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return false;
  try {
    r->ts_ns = j.at("ts_ns").get<uint64_t>();
    r->http_status = j.at("status").get<int>();
    r->reason = j.at("reason").get<std::string>();
    r->key = j.at("key").get<std::string>();
    r->trace_ids = j.at("trace_ids").get<std::vector<std::string>>();
    r->docs = j.at("docs").get<std::vector<std::string>>();
  } catch (const json::exception&) {
    return false;
  }
  return r->docs.size() == r->trace_ids.size();
}

std::string new_idempotency_key() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  uint64_t a, b;
  {
    std::lock_guard lock(mu);
    a = rng();
    b = rng();
  }
  return fmt::format("{:016x}{:016x}", a, b);
}

buffer::Status max_batch_id(buffer::Store& store, uint64_t* id) {
  *id = 0;
  std::vector<std::pair<std::string, std::string>> rows;
  buffer::Status s = store.meta_scan(kBatchPrefix, SIZE_MAX, &rows);
  if (!s.ok()) return s;
  for (auto& [k, v] : rows) {
    BatchRecord r;
    if (decode_batch(k, v, &r)) *id = std::max(*id, r.id);
  }
  return s;
}

buffer::Status deadletter_add(buffer::Store& store, const DeadLetterRecord& r, uint64_t max_bytes,
                              uint32_t max_count, uint64_t* evicted_records,
                              uint64_t* evicted_docs) {
  static std::atomic<uint32_t> counter{0};
  std::string key = fmt::format("{}{:016x}-{:08x}", kDeadLetterPrefix, r.ts_ns,
                                counter.fetch_add(1, std::memory_order_relaxed));
  buffer::Status s = store.meta_put(key, encode_deadletter(r));
  if (!s.ok()) return s;
  std::vector<std::pair<std::string, std::string>> rows;
  s = store.meta_scan(kDeadLetterPrefix, SIZE_MAX, &rows);
  if (!s.ok()) return s;
  uint64_t total = 0;
  for (auto& row : rows)
    total += row.second.size();
  size_t count = rows.size();
  for (auto& [k, v] : rows) {
    if ((count <= max_count && total <= max_bytes) || k == key) break;
    DeadLetterRecord old;
    size_t docs = decode_deadletter(v, &old) ? old.docs.size() : 0;
    s = store.meta_delete(k);
    if (!s.ok()) return s;
    --count;
    total -= v.size();
    ++*evicted_records;
    *evicted_docs += docs;
  }
  return buffer::Status::Ok();
}

buffer::Status replay_deadletters(buffer::Store& store, uint64_t* next_id,
                                  std::vector<BatchRecord>* created, size_t* replayed) {
  *replayed = 0;
  std::vector<std::pair<std::string, std::string>> rows;
  buffer::Status s = store.meta_scan(kDeadLetterPrefix, SIZE_MAX, &rows);
  if (!s.ok()) return s;
  for (auto& [k, v] : rows) {
    DeadLetterRecord d;
    if (decode_deadletter(v, &d) && !d.docs.empty()) {
      BatchRecord b;
      b.id = (*next_id)++;
      b.key = new_idempotency_key();
      b.trace_ids = std::move(d.trace_ids);
      b.docs = std::move(d.docs);
      s = store.meta_put(batch_meta_key(b.id), encode_batch(b));
      if (!s.ok()) return s;
      if (created != nullptr) created->push_back(std::move(b));
    }
    s = store.meta_delete(k);
    if (!s.ok()) return s;
    ++*replayed;
  }
  return buffer::Status::Ok();
}

}  // namespace sidetrace::upstream::detail

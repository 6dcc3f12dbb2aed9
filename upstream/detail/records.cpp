#include "upstream/detail/records.h"

#include <fmt/format.h>

#include <algorithm>
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

buffer::Status max_batch_id(buffer::MetaStore& store, uint64_t* id) {
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

namespace {

// Dead-letter changes of this process, one at a time: each reads the totals,
// changes records and writes the totals back in one atomic write.
std::mutex& deadletter_mu() {
  static std::mutex mu;
  return mu;
}

using Rows = std::vector<std::pair<std::string, std::string>>;

std::string encode_totals(const DeadLetterTotals& t) {
  return fmt::format("{{\"count\":{},\"bytes\":{}}}", t.count, t.bytes);
}

// The totals by counting every record, a page at a time (a store written
// before the totals were kept, or totals that no longer match).
buffer::Status count_deadletters(buffer::MetaStore& store, DeadLetterTotals* t) {
  *t = {};
  std::string after;
  for (;;) {
    Rows rows;
    buffer::Status s = store.meta_scan_after(kDeadLetterPrefix, after, kDeadLetterPage, &rows);
    if (!s.ok()) return s;
    if (rows.empty()) break;
    for (auto& [k, v] : rows) {
      ++t->count;
      t->bytes += v.size();
    }
    after = rows.back().first;
  }
  return store.meta_put(kDeadLetterTotalsKey, encode_totals(*t));
}

buffer::Status load_totals(buffer::MetaStore& store, DeadLetterTotals* t) {
  std::string v;
  buffer::Status s = store.meta_get(kDeadLetterTotalsKey, &v);
  if (s.IsNotFound()) return count_deadletters(store, t);
  if (!s.ok()) return s;
  json j = json::parse(v, nullptr, false);
  if (j.is_object() && j.contains("count") && j.contains("bytes") &&
      j["count"].is_number_unsigned() && j["bytes"].is_number_unsigned()) {
    t->count = j["count"].get<uint64_t>();
    t->bytes = j["bytes"].get<uint64_t>();
    return s;
  }
  return count_deadletters(store, t);
}

void take(DeadLetterTotals* t, size_t bytes) {
  t->count = t->count > 0 ? t->count - 1 : 0;
  t->bytes = t->bytes > bytes ? t->bytes - bytes : 0;
}

}  // namespace

buffer::Status deadletter_totals(buffer::MetaStore& store, DeadLetterTotals* t) {
  std::lock_guard lock(deadletter_mu());
  return load_totals(store, t);
}

buffer::Status deadletter_add(buffer::MetaStore& store, const DeadLetterRecord& r,
                              uint64_t max_bytes, uint32_t max_count, uint64_t* evicted_records,
                              uint64_t* evicted_docs) {
  static std::atomic<uint32_t> counter{0};
  std::lock_guard lock(deadletter_mu());
  DeadLetterTotals t;
  buffer::Status s = load_totals(store, &t);
  if (!s.ok()) return s;
  std::string key = fmt::format("{}{:016x}-{:08x}", kDeadLetterPrefix, r.ts_ns,
                                counter.fetch_add(1, std::memory_order_relaxed));
  std::string value = encode_deadletter(r);
  ++t.count;
  t.bytes += value.size();
  buffer::MetaStore::MetaWrite w;
  w.put = {{key, std::move(value)}, {std::string(kDeadLetterTotalsKey), encode_totals(t)}};
  s = store.meta_write(w);
  if (!s.ok()) return s;
  // Evicts the oldest records, a page at a time, until the bounds hold (the
  // new record stays even when it alone exceeds them).
  bool recounted = false;
  while (t.count > max_count || t.bytes > max_bytes) {
    Rows rows;
    s = store.meta_scan_after(kDeadLetterPrefix, {}, kDeadLetterPage, &rows);
    if (!s.ok()) return s;
    bool only_new = rows.empty() || rows.front().first == key;
    if (only_new) {
      // Nothing older to evict: the totals overstate what is stored (records
      // removed by a process that does not keep them). Count once and retry.
      if (recounted) break;
      s = count_deadletters(store, &t);
      if (!s.ok()) return s;
      recounted = true;
      continue;
    }
    buffer::MetaStore::MetaWrite evict;
    DeadLetterTotals after = t;
    uint64_t docs = 0;
    for (auto& [k, v] : rows) {
      if (k == key || (after.count <= max_count && after.bytes <= max_bytes)) break;
      DeadLetterRecord old;
      docs += decode_deadletter(v, &old) ? old.docs.size() : 0;
      evict.del.push_back(k);
      take(&after, v.size());
    }
    evict.put = {{std::string(kDeadLetterTotalsKey), encode_totals(after)}};
    s = store.meta_write(evict);
    if (!s.ok()) return s;
    *evicted_records += evict.del.size();
    *evicted_docs += docs;
    t = after;
  }
  return buffer::Status::Ok();
}

buffer::Status replay_deadletters(buffer::MetaStore& store, uint64_t* next_id,
                                  std::vector<BatchRecord>* created, size_t* replayed,
                                  size_t max_records, const std::function<void(size_t)>& progress) {
  *replayed = 0;
  std::lock_guard lock(deadletter_mu());
  DeadLetterTotals t;
  buffer::Status s = load_totals(store, &t);
  if (!s.ok()) return s;
  // A page at a time: its records become batches and leave the dead-letter
  // store in one atomic write, so that a crash neither loses nor doubles one.
  while (*replayed < max_records) {
    Rows rows;
    s = store.meta_scan_after(kDeadLetterPrefix, {},
                              std::min(kDeadLetterPage, max_records - *replayed), &rows);
    if (!s.ok()) return s;
    if (rows.empty()) break;
    buffer::MetaStore::MetaWrite w;
    std::vector<BatchRecord> page;
    for (auto& [k, v] : rows) {
      DeadLetterRecord d;
      if (decode_deadletter(v, &d) && !d.docs.empty()) {
        BatchRecord b;
        b.id = (*next_id)++;
        b.key = new_idempotency_key();
        b.trace_ids = std::move(d.trace_ids);
        b.docs = std::move(d.docs);
        w.put.emplace_back(batch_meta_key(b.id), encode_batch(b));
        page.push_back(std::move(b));
      }
      w.del.push_back(k);
      take(&t, v.size());
    }
    w.put.emplace_back(std::string(kDeadLetterTotalsKey), encode_totals(t));
    s = store.meta_write(w);
    if (!s.ok()) return s;
    *replayed += rows.size();
    if (created != nullptr) {
      for (auto& b : page)
        created->push_back(std::move(b));
    }
    if (progress) progress(*replayed);
  }
  return buffer::Status::Ok();
}

buffer::Status purge_deadletters(buffer::MetaStore& store, size_t* purged,
                                 const std::function<void(size_t)>& progress) {
  *purged = 0;
  std::lock_guard lock(deadletter_mu());
  for (;;) {
    Rows rows;
    buffer::Status s = store.meta_scan_after(kDeadLetterPrefix, {}, kDeadLetterPage, &rows);
    if (!s.ok()) return s;
    buffer::MetaStore::MetaWrite w;
    for (auto& row : rows)
      w.del.push_back(row.first);
    // The totals go with the last page: zero.
    if (rows.size() < kDeadLetterPage) {
      w.put = {{std::string(kDeadLetterTotalsKey), encode_totals({})}};
    }
    s = store.meta_write(w);
    if (!s.ok()) return s;
    *purged += rows.size();
    if (progress && !rows.empty()) progress(*purged);
    if (rows.size() < kDeadLetterPage) return s;
  }
}

}  // namespace sidetrace::upstream::detail

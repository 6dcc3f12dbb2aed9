// Persistent records in the store's meta column family:
//   upstream/batch/<016x id>        a batch being delivered: its idempotency key
//                                   and composition (outbox seqs, or inline
//                                   documents for replayed dead letters)
//   upstream/deadletter/<016x ts>-<08x n>  a batch the upstream rejected
//   upstream/deadletter-totals      how many dead-letter records, and their bytes
//
// Thread safety: free functions; the store synchronises.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "buffer/meta_store.h"

namespace sidetrace::upstream::detail {

inline constexpr std::string_view kBatchPrefix = "upstream/batch/";
inline constexpr std::string_view kDeadLetterPrefix = "upstream/deadletter/";

struct BatchRecord {
  uint64_t id = 0;
  std::string key;                     // Idempotency-Key, 32 hex digits
  std::vector<uint64_t> seqs;          // outbox seqs (acked on delivery); empty when inline
  std::vector<std::string> trace_ids;  // one per seq, or one per inline document
  std::vector<std::string> docs;       // inline documents (replayed dead letters)
  bool is_inline() const { return seqs.empty(); }
};

std::string batch_meta_key(uint64_t id);
std::string encode_batch(const BatchRecord& r);
// False for a malformed record.
bool decode_batch(std::string_view key, std::string_view value, BatchRecord* r);

struct DeadLetterRecord {
  uint64_t ts_ns = 0;
  int http_status = 0;
  std::string reason;
  std::string key;
  std::vector<std::string> trace_ids;
  std::vector<std::string> docs;
};

std::string encode_deadletter(const DeadLetterRecord& r);
bool decode_deadletter(std::string_view value, DeadLetterRecord* r);

// A fresh random idempotency key (32 lowercase hex digits).
std::string new_idempotency_key();

// The largest batch id stored, 0 when none.
buffer::Status max_batch_id(buffer::MetaStore& store, uint64_t* id);

// The dead-letter store is read and changed a page of records at a time, and
// its totals are kept beside it (updated in the same atomic write as the
// records), so that no operation loads it whole.
inline constexpr size_t kDeadLetterPage = 16;
inline constexpr std::string_view kDeadLetterTotalsKey = "upstream/deadletter-totals";

struct DeadLetterTotals {
  uint64_t count = 0;  // records
  uint64_t bytes = 0;  // their value bytes
};
// The kept totals (counted, a page at a time, the first time).
buffer::Status deadletter_totals(buffer::MetaStore& store, DeadLetterTotals* t);

// Stores `r`, then evicts the oldest records until at most `max_count`
// records and `max_bytes` value bytes remain (the new one is kept even when it
// alone exceeds the bound). Adds the evicted records and their documents to
// the counters.
buffer::Status deadletter_add(buffer::MetaStore& store, const DeadLetterRecord& r,
                              uint64_t max_bytes, uint32_t max_count, uint64_t* evicted_records,
                              uint64_t* evicted_docs);

// Turns every dead-letter record (at most `max_records` of them, oldest
// first) into an inline batch record with a new key and id (from *next_id,
// incremented), deleting the dead letter. The created records are appended to
// `created` when it is not null. `*replayed` counts the records taken,
// including malformed ones (deleted without a batch). `progress` (if set)
// hears that count after each page.
buffer::Status replay_deadletters(buffer::MetaStore& store, uint64_t* next_id,
                                  std::vector<BatchRecord>* created, size_t* replayed,
                                  size_t max_records = SIZE_MAX,
                                  const std::function<void(size_t)>& progress = {});

// Deletes every dead-letter record; `progress` as above.
buffer::Status purge_deadletters(buffer::MetaStore& store, size_t* purged,
                                 const std::function<void(size_t)>& progress = {});

}  // namespace sidetrace::upstream::detail

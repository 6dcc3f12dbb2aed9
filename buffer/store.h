// The durable store: RocksDB under data_dir. Everything the agent accepts is
// written here before anything else happens to it.
//
// Column families:
//   events   (len(trace_id), trace_id, seq) -> recv_ns, raw msgpack message.
//            A trace's messages are one key range; kept after emission for
//            trace.retain_s so that late messages can rebuild the whole trace.
//   pending  seq -> trace_id. Committed messages not yet folded into an emitted
//            revision; the source of truth for what the assembler still owes.
//   traces   trace_id -> per-trace state (last emitted revision, times, ...).
//   outbox   outbox seq -> finished trace revision (JSON document) waiting for
//            delivery, in emission order.
//   meta     free-form keys for other components (delivery batches, dead
//            letters, schema version), namespaced by a prefix per owner.
//
// Thread safety: every method may be called from any thread; RocksDB provides
// the synchronisation. Sequence numbers are assigned by the store.
//
// NOTE TO IMPLEMENTERS: the outbox and meta sections below are a contract that
// upstream/ codes against; keep their signatures and semantics. The rest of
// this header belongs to buffer/ and may change.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "buffer/status.h"

namespace sidetrace::buffer {

struct OutboxEntry {
  uint64_t seq = 0;  // outbox sequence; strictly increasing in emission order
  std::string trace_id;
  uint32_t revision = 0;
  uint64_t emitted_ns = 0;  // wall clock at emission
  std::string document;     // the trace document, JSON (docs/trace-document.md)
};

class Store {
 public:
  virtual ~Store() = default;

  // ---- outbox (contract used by upstream/) -------------------------------

  // Appends up to `max_entries` entries, stopping before `max_bytes` of
  // documents would be exceeded (at least one entry when any exists), whose
  // seq is >= `from_seq`, in seq order, to `out`.
  virtual Status read_outbox(uint64_t from_seq, size_t max_entries, size_t max_bytes,
                             std::vector<OutboxEntry>* out) = 0;

  // Deletes delivered entries. Deleting an absent seq is not an error.
  // Durable per buffer.sync before it returns.
  virtual Status ack_outbox(std::span<const uint64_t> seqs) = 0;

  // Number of entries and document bytes currently in the outbox.
  virtual uint64_t outbox_entries() const = 0;
  virtual uint64_t outbox_bytes() const = 0;

  // Calls `fn` (from the emitting thread, so it must be quick and must not
  // call back into the store) whenever entries are appended to the outbox.
  // One listener; setting another replaces it.
  virtual void set_outbox_listener(std::function<void()> fn) = 0;

  // ---- meta (contract used by upstream/ and agent/) ----------------------

  virtual Status meta_put(std::string_view key, std::string_view value) = 0;
  virtual Status meta_get(std::string_view key, std::string* value) = 0;  // NotFound if absent
  virtual Status meta_delete(std::string_view key) = 0;
  // Every key starting with `prefix`, in key order, at most `limit`.
  virtual Status meta_scan(std::string_view prefix, size_t limit,
                           std::vector<std::pair<std::string, std::string>>* out) = 0;
};

}  // namespace sidetrace::buffer

// The durable store: RocksDB under data_dir. Everything the agent accepts is
// written here before anything else happens to it.
//
// Column families:
//   events   the log: position -> recv_ns, trace_id, raw msgpack message, in
//            arrival order. A trace's messages are found through its runs
//            (in traces); kept after emission for trace.retain_s so that late
//            messages can rebuild the whole trace. Dropped messages stay in
//            the log until its front passes them, and whole table files go:
//            nothing is deleted message by message, so its files never
//            overlap and are never rewritten.
//   pending  seq -> recv_ns, message count, commit time, trace_id. One
//            record per trace and group commit (keyed by the seq of the
//            trace's first message in it) for messages not yet folded into
//            an emitted revision; the source of truth for what the assembler
//            still owes.
//   traces   trace_id -> per-trace state (last emitted revision, times, ...),
//            the trace's runs (where its messages of each group commit are
//            in the log), the retention index and the store's own counters.
//   outbox   outbox seq -> finished trace revision waiting for delivery, in
//            emission order: its JSON document, or a recipe to build the
//            document again from the trace's stored messages (the document
//            itself then waits in memory; see Emission::recipe).
//   meta     free-form keys for other components (delivery batches, dead
//            letters, schema version), namespaced by a prefix per owner.
//
// Each stage reaches the store through the contract it owns, a small
// interface that Store implements:
//   EventLog    (event_log.h)    the writer's group commits and the quota
//   TraceStore  (trace_store.h)  the assembler's pending records, trace
//                                states, stored messages and emissions
//   Outbox      (outbox.h)       delivery's reads and acknowledgements
//   MetaStore   (meta_store.h)   keyed records of delivery, the assembler
//                                and the agent
// Only the agent's wiring and its offline tools hold the whole Store.
//
// Thread safety: every method may be called from any thread; RocksDB provides
// the synchronisation. Sequence numbers are assigned by the store.
//
// Errors: no method throws. Every method returns a Status; NoSpace means the
// disk (or the quota) is full and the same call may succeed later.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "buffer/event_log.h"
#include "buffer/meta_store.h"
#include "buffer/outbox.h"
#include "buffer/status.h"
#include "buffer/trace_store.h"
#include "common/clock.h"

namespace rocksdb {
class Env;
}

namespace sidetrace::buffer {

enum class SyncMode {
  kFsync,  // every commit is fsync'ed before it counts as persisted (default)
  kOs,     // commits are handed to the OS: survive kill -9, not a power loss
};

enum class WhenFull {
  kDropOldest,  // make room: retained events of delivered traces, then the outbox
  kDropNewest,  // make room from retained events of delivered traces only, then
                // refuse new events
};

struct StoreOptions {
  // The store lives in `data_dir`/store; created when absent.
  std::string data_dir;
  // Bound on the logical size (keys + values before compression) of what the
  // store holds, excluding meta. Disk use stays close to it; RocksDB needs
  // some transient room on top for compactions.
  uint64_t max_bytes = 2ull << 30;
  SyncMode sync = SyncMode::kFsync;
  WhenFull when_full = WhenFull::kDropOldest;
  // Memory: the block cache, and the total of all memtables (a
  // WriteBufferManager). Together they bound the store's RAM use. Recent
  // data is read from the memtables, so the cache stays small; 12 MiB of
  // memtables (from 32) took 14 MiB off the peak RSS at 20,000 msg/s and
  // did not slow the side-by-side job (bench/footprint.py, bench/compare).
  size_t block_cache_bytes = 4 << 20;
  size_t memtable_budget_bytes = 12 << 20;
  // Bound of the outbox documents held in memory for entries written with a
  // recipe (Emission::recipe) until delivery reads them; past it the outbox
  // entry holds the document. At 2,000 msg/s about four seconds of traces:
  // delivery reads them within its flush interval.
  size_t document_cache_bytes = 4 << 20;
  // Bound on the write-ahead log before memtables are flushed to free it.
  uint64_t max_wal_bytes = 128 << 20;
  // Filesystem access; nullptr = the default Env. Tests inject faults here.
  // Not owned; must outlive the store.
  rocksdb::Env* env = nullptr;
  // Wall clock for emission and retention times; nullptr = the system clock.
  // Not owned; must outlive the store.
  const Clock* clock = nullptr;
};

struct StoreCounters {
  uint64_t live_bytes = 0;               // logical bytes held (quota measure)
  uint64_t dropped_retained_traces = 0;  // traces whose retained events went for room
  uint64_t dropped_retained_events = 0;
  uint64_t dropped_outbox_entries = 0;  // undelivered revisions dropped for room
  uint64_t documents_rebuilt = 0;       // outbox documents built again (not in memory)
  uint64_t document_cache_bytes = 0;    // outbox documents waiting in memory now
  uint64_t expired_traces = 0;          // traces whose events passed retain_s
  uint64_t forgotten_traces = 0;        // state records removed after their keep time
  uint64_t reclaimed_bytes = 0;         // disk space of deleted files given back
  uint64_t reclaim_pending_bytes = 0;   // ... and still to give back (see reclaim.h)
  // Bytes of dropped messages still in the log, below its reclaimed front
  // (not counted in live_bytes).
  uint64_t log_garbage_bytes = 0;
  uint64_t log_moved_messages = 0;  // still needed at the log's front: moved to its head
};

class Store : public EventLog, public TraceStore, public Outbox, public MetaStore {
 public:
  ~Store() override = default;

  // Asks RocksDB to compact away deleted data now (tests and tooling).
  virtual Status compact() = 0;

  virtual StoreCounters counters() const = 0;

  // ---- opening -------------------------------------------------------------

  // Opens (or creates) the store. RocksDB recovers a torn WAL tail itself
  // (point-in-time recovery). Corruption or IOError when the store cannot be
  // opened (see open_or_quarantine()); Busy when another process holds it.
  static Status open(const StoreOptions& options, std::unique_ptr<Store>* out);
};

// The start-up policy for a store that cannot be opened: when open() fails
// with Corruption or IOError, the directory `data_dir`/store is renamed to
// `data_dir`/store.corrupt-<unix seconds> (never deleted, so that its data can
// be examined or salvaged), an error is logged, and a fresh store is opened.
// `quarantined` (optional) receives the new path of the moved directory, empty
// when nothing was moved. Busy and InvalidArgument are returned as they are.
Status open_or_quarantine(const StoreOptions& options, std::unique_ptr<Store>* out,
                          std::string* quarantined = nullptr);

}  // namespace sidetrace::buffer

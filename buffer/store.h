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
// Thread safety: every method may be called from any thread; RocksDB provides
// the synchronisation. Sequence numbers are assigned by the store.
//
// Errors: no method throws. Every method returns a Status; NoSpace means the
// disk (or the quota) is full and the same call may succeed later.
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
#include "common/clock.h"
#include "ipc/message.h"

namespace rocksdb {
class Env;
}

namespace sidetrace::buffer {

// A trace document, JSON (docs/trace-document.md). Shared, never changed: the
// one text built at emission serves the outbox, the viewer and the request
// that delivers it, without a copy for each.
using Document = std::shared_ptr<const std::string>;

// A Document holding `text`.
inline Document make_document(std::string text) {
  return std::make_shared<const std::string>(std::move(text));
}

struct OutboxEntry {
  uint64_t seq = 0;  // outbox sequence; strictly increasing in emission order
  std::string trace_id;
  uint32_t revision = 0;
  uint64_t emitted_ns = 0;  // wall clock at emission
  Document document;        // never null in an entry read_outbox() returns
};

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

// One message as committed: its store sequence and where it belongs; or,
// from scan_pending(), one pending record.
struct Committed {
  std::string trace_id;
  uint64_t seq = 0;
  uint64_t recv_ns = 0;
  // > 0 when a pending record is keyed by `seq`: the number of messages of the
  // trace in that commit it stands for (the trace's first message in the
  // commit carries it). 0 for the trace's other messages of the commit.
  uint32_t record_messages = 0;
  uint32_t bytes = 0;  // the raw message's size (0 from scan_pending())
  // The message's bytes when the writer hands them over with the notice
  // (moved out of the committed message; see Writer::Sink). Empty from
  // append() and scan_pending().
  std::string raw;
  // From scan_pending(): when the record's commit was written (the store's
  // clock; 0 for records stored by versions that did not keep it). 0 from
  // append().
  uint64_t stored_ns = 0;
};

// One stored message of a trace.
struct StoredEvent {
  uint64_t seq = 0;
  uint64_t recv_ns = 0;
  std::string raw;
};

// What the store keeps per trace once it has been emitted.
struct TraceState {
  uint32_t revision = 0;        // last emitted revision; 0 = never emitted
  uint64_t first_emit_ns = 0;   // wall clock of revision 1
  uint64_t last_emit_ns = 0;    // wall clock of the last revision
  uint64_t max_seq = 0;         // highest event seq folded into a revision
  bool events_deleted = false;  // events up to max_seq were deleted (retention/quota)
  // The outbox seqs of the trace's first and last entries written with a
  // recipe that may not be acknowledged yet (0: none; store-maintained).
  // While the outbox holds an entry of the trace between them, the trace's
  // events are kept whatever retention says, and quota takes them only with
  // the entries. An acknowledgement writes nothing to the state (only the
  // retention index), so the state is not read back to deliver a trace.
  uint64_t pin_first = 0, pin_last = 0;
  // Entries written with a recipe by earlier versions, counted in the state
  // and not yet acknowledged (store-maintained); they keep the events as
  // those between pin_first and pin_last do.
  uint32_t undelivered = 0;
  uint64_t deleted_ns = 0;  // when they were deleted (store-maintained)
  uint64_t generation = 0;  // bumped by every change; guards read-modify-write
  // Revisions that went out as parts (trace.max_events / trace.max_bytes):
  // once a trace is split, each revision carries only the messages stored
  // after the one before it. 0: every revision was the whole trace.
  uint32_t parts = 0;
};

// One pending record: the seq of a trace's first message in a group commit,
// and how many of its messages the commit held (Committed::record_messages).
struct RecordRef {
  uint64_t seq = 0;
  uint32_t messages = 0;
};

// Which of a trace's stored messages read_trace() reads: those with seq in
// [from_seq, until_seq), at most `max_events` of them and, past the first,
// no more than `max_bytes` of raw messages.
struct TraceRange {
  uint64_t from_seq = 0;
  uint64_t until_seq = UINT64_MAX;
  size_t max_events = SIZE_MAX;
  size_t max_bytes = SIZE_MAX;
};

// One revision to emit, written atomically by Store::emit().
struct Emission {
  std::string trace_id;
  uint64_t expected_generation = 0;    // TraceState::generation read before building
  TraceState state;                    // the new state (generation is set by the store)
  std::vector<uint64_t> pending_seqs;  // pending records folded into this revision
  Document document;                   // not null
  // Empty: the outbox entry holds the document. Otherwise, while the
  // document fits StoreOptions::document_cache_bytes, it waits in memory for
  // read_outbox() (the same text, not a copy) and the entry holds this
  // instead (what the document builder, set_document_builder(), needs to
  // build the same document again from the trace's stored messages); the
  // trace's messages are then kept until the entry is acknowledged
  // (TraceState::pin_first, pin_last). Past that bound (delivery is
  // behind) the entry holds the document.
  std::string recipe;
  uint64_t emitted_ns = 0;
};

// Builds the document of an outbox entry written with a recipe, from the
// trace's stored messages (see Emission::recipe). Called by read_outbox(),
// with no lock of the store held, so it may read the store.
using DocumentBuilder = std::function<Status(std::string_view trace_id, uint32_t revision,
                                             std::string_view recipe, std::string* document)>;

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

class Store {
 public:
  virtual ~Store() = default;

  // ---- outbox (contract used by upstream/) -------------------------------

  // Appends up to `max_entries` entries, stopping before `max_bytes` of
  // documents would be exceeded (at least one entry when any exists), whose
  // seq is >= `from_seq`, in seq order, to `out`. The document of an entry
  // written with a recipe is taken from memory (once: a second read builds
  // it again) or built by the document builder; IOError when there is none.
  virtual Status read_outbox(uint64_t from_seq, size_t max_entries, size_t max_bytes,
                             std::vector<OutboxEntry>* out) = 0;

  // Deletes delivered entries. Deleting an absent seq is not an error.
  // Like every write below (meta), it is not synced on its own: it survives a
  // crash of the agent at once, and a power loss once the next synced write
  // (the writer's next group commit) or flush has made it durable. The WAL
  // keeps a prefix of writes, so a power loss can only undo the last of them,
  // whole and in order: acknowledged entries are then delivered again (at
  // least once), and nothing stored is lost.
  virtual Status ack_outbox(std::span<const uint64_t> seqs) = 0;

  // Number of entries and document bytes currently in the outbox.
  virtual uint64_t outbox_entries() const = 0;
  virtual uint64_t outbox_bytes() const = 0;

  // Calls `fn` (from the emitting thread, so it must be quick and must not
  // call back into the store, but for outbox_entries() and outbox_bytes())
  // whenever entries are appended to the outbox.
  // One listener; setting another replaces it.
  virtual void set_outbox_listener(std::function<void()> fn) = 0;

  // Sets how the documents of entries written with a recipe are built again
  // (the one who writes recipes sets it). One builder; setting another
  // replaces it.
  virtual void set_document_builder(DocumentBuilder fn) = 0;

  // ---- meta (contract used by upstream/ and agent/) ----------------------
  // Writes are durable as ack_outbox()'s are.

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

  // ---- events (used by buffer::Writer) -----------------------------------

  // Persists `msgs` in one atomic, group-committed write (the events, and one
  // pending record per trace), assigning consecutive sequence numbers; appends
  // one Committed per message to `out`, in order, once the write is durable
  // (per StoreOptions::sync). Writes are
  // serialised: sequence numbers become visible in increasing order.
  // NoSpace when the disk is full; nothing of `msgs` is stored then.
  // The quota is not checked here (see ensure_room()).
  virtual Status append(std::span<const ipc::Message> msgs, std::vector<Committed>* out) = 0;

  // Quota: whether `bytes` more fit under max_bytes. Makes room first from
  // the retained events of delivered traces (oldest emission first), and
  // with kDropOldest then from the oldest outbox entries, each with the
  // events it refers to. Returns Full when they do not fit, and
  // the error of a failed write (NoSpace, IOError) when making room failed.
  virtual Status ensure_room(uint64_t bytes) = 0;

  // After a failed write (NoSpace, IOError), reopens the store: RocksDB's
  // background-error state after a failed WAL write clears safely only so.
  // Ok once writes may succeed again.
  virtual Status resume() = 0;

  // True once any write (from any caller) failed, until resume() succeeds.
  virtual bool needs_resume() const = 0;

  // ---- traces (used by trace::Assembler) ---------------------------------

  // The stored messages of `trace_id` in `range`, in seq order, appended to
  // `out`; `*more` tells whether a limit stopped the read before the end of
  // the range.
  virtual Status read_trace(std::string_view trace_id, const TraceRange& range,
                            std::vector<StoredEvent>* out, bool* more) = 0;

  // Every stored message of `trace_id` in seq order, appended to `out`.
  Status read_trace(std::string_view trace_id, std::vector<StoredEvent>* out) {
    bool more = false;
    return read_trace(trace_id, TraceRange{}, out, &more);
  }

  // The messages of `trace_id` that its pending records `records` stand for,
  // read where append() stored them (a record's messages take the log
  // positions [seq, seq + messages)), appended to `out` in seq order.
  // NotFound when one of them is not there any more (the log's front moved or
  // dropped it; read_trace() finds them); Full when, past the first, their
  // raw bytes pass `max_bytes`. Either way nothing is appended. Cheaper than
  // read_trace() for what is still where it was stored: no lookup of the
  // trace's runs.
  virtual Status read_records(std::string_view trace_id, std::span<const RecordRef> records,
                              size_t max_bytes, std::vector<StoredEvent>* out) = 0;

  // The pending records with seq >= `from_seq`, at most `limit`, in seq order
  // (record_messages > 0 in each).
  virtual Status scan_pending(uint64_t from_seq, size_t limit, std::vector<Committed>* out) = 0;

  // Deletes pending records of `trace_id` whose messages an earlier revision
  // already folded (a record the assembler learnt of only after emitting).
  // Deleting an absent record is not an error.
  virtual Status release_pending(std::string_view trace_id, std::span<const uint64_t> seqs) = 0;

  // The trace's state; NotFound when it was never emitted (or forgotten).
  virtual Status get_state(std::string_view trace_id, TraceState* out) = 0;

  // Emits one revision in ONE atomic write: the outbox entry, the new trace
  // state, the retention index, the deletion of the pending records
  // `pending_seqs` (each must be a record of this trace). Busy when the
  // state changed since it was read (expected_generation): read again and
  // rebuild. On success sets `*outbox_seq` and calls the outbox listener.
  virtual Status emit(const Emission& e, uint64_t* outbox_seq) = 0;

  // Emits several revisions (of distinct traces) in one atomic write. Each
  // gets its own outcome in results[i] (Ok, Busy as for emit(), or an error
  // of its own) and, when Ok, its outbox_seqs[i]. The returned status is an
  // error only when the write itself failed: then nothing was emitted. The
  // spans have equal sizes.
  virtual Status emit_many(std::span<const Emission> es, std::span<Status> results,
                           std::span<uint64_t> outbox_seqs) = 0;

  // Retention: deletes the events (up to their state's max_seq) of at most
  // `max_traces` traces whose last emission is older than `emitted_before_ns`,
  // keeping their state with events_deleted set; removes state records whose
  // events were deleted before `forget_before_ns`. Counts in counters().
  virtual Status expire(uint64_t emitted_before_ns, uint64_t forget_before_ns,
                        size_t max_traces) = 0;

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

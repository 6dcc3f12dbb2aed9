// What the assembler (trace::Assembler) reads and writes: the messages each
// trace still owes (pending records), the stored messages of a trace, its
// state, and the emission of a revision into the outbox. Implemented by
// Store.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "buffer/event_log.h"
#include "buffer/outbox.h"
#include "buffer/status.h"

namespace sidetrace::buffer {

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

// One revision to emit, written atomically by TraceStore::emit().
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

// Thread safety: every method may be called from any thread. No method
// throws.
class TraceStore {
 public:
  virtual ~TraceStore() = default;

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
  // read where EventLog::append() stored them (a record's messages take the
  // log positions [seq, seq + messages)), appended to `out` in seq order.
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

  // The document bytes of the revisions emitted and not delivered yet (the
  // outbox's): what an emitter waits on before it adds more to a backlog.
  virtual uint64_t undelivered_bytes() const = 0;

  // Sets how the documents of entries written with a recipe are built again
  // (the one who writes recipes sets it). One builder; setting another
  // replaces it.
  virtual void set_document_builder(DocumentBuilder fn) = 0;

  // Retention: deletes the events (up to their state's max_seq) of at most
  // `max_traces` traces whose last emission is older than `emitted_before_ns`,
  // keeping their state with events_deleted set; removes state records whose
  // events were deleted before `forget_before_ns`. Counts in
  // Store::counters().
  virtual Status expire(uint64_t emitted_before_ns, uint64_t forget_before_ns,
                        size_t max_traces) = 0;
};

}  // namespace sidetrace::buffer

// The event log: what the writer (buffer::Writer) persists, one group commit
// at a time, before anything else happens to a message. Implemented by Store.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "buffer/status.h"
#include "ipc/message.h"

namespace sidetrace::buffer {

// One message as committed: its store sequence and where it belongs; or,
// from TraceStore::scan_pending(), one pending record.
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

// Thread safety: every method may be called from any thread. No method
// throws.
class EventLog {
 public:
  virtual ~EventLog() = default;

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
};

}  // namespace sidetrace::buffer

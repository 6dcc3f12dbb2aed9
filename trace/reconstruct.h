// Trace reconstruction: the pure function from a trace's messages, in any
// order and with any duplicates, to its trace document.
//
// Thread safety: build_trace() has no shared state; call it from any thread.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace sidetrace::trace {

// One message as the durable store holds it.
struct StoredMessage {
  // Store sequence (arrival order): it affects nothing but the "changed"
  // flags (BuildOptions::changed_after_seq).
  uint64_t seq = 0;
  uint64_t recv_ns = 0;  // receive time; stands in for an absent `ts`
  std::string_view raw;  // the msgpack map as received
};

struct BuildOptions {
  uint32_t revision = 1;
  // The trace hit trace.max_open_s: events still open are marked unfinished
  // and the trace status becomes "unfinished".
  bool mark_unfinished = false;
  // Some of the trace's earlier messages are no longer stored (retention
  // expired); the document is marked partial.
  bool partial = false;
  // > 0: the document is part `part` of a trace that goes out in parts
  // (trace.max_events / trace.max_bytes); it holds only the messages given.
  uint32_t part = 0;
  // The highest store seq folded into the trace's previous revision: a
  // message with a copy at or below it was folded before and is not new (a
  // duplicate of it stored later changes nothing). Events and
  // feedback items are marked "changed" when any of their messages is new,
  // and "trace_changed" tells whether a `trace` message is. 0: every message
  // is new (revision 1, and every part of a trace in parts).
  uint64_t changed_after_seq = 0;
};

struct BuildResult {
  std::string document;  // JSON text, one object, no trailing newline
  // At least one event, every started event has ended and every ended event
  // has started.
  bool complete = false;
  size_t events = 0;       // distinct events in the document
  size_t changed = 0;      // ... of which marked changed
  size_t unfinished = 0;   // events with a start but no end
  size_t orphans = 0;      // events whose parent is not in the trace
  size_t undecodable = 0;  // messages skipped because they failed to decode
  size_t foreign = 0;      // messages skipped because they name another trace_id
  uint64_t start_ts_ns = 0;
  uint64_t end_ts_ns = 0;
};

BuildResult build_trace(std::string_view trace_id, std::span<const StoredMessage> messages,
                        const BuildOptions& options);

}  // namespace sidetrace::trace

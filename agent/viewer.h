// The local trace viewer: a bounded in-memory store of the most recently
// emitted trace documents, and the admin routes that serve them (the `/ui`
// page and its JSON API).
//
// RecentTraces keeps the latest revision of each trace, bounded by a count
// and by bytes; when either bound is exceeded the entry added longest ago is
// evicted. Every accepted add() gets the next sequence number (starting at 1),
// so a client that remembers the highest number it has seen can ask for what
// is newer ("since" polling). A new revision of a trace replaces the old one
// and gets a new sequence number; an older or equal revision is ignored.
// add() only copies the document (it runs on the assembler's thread); its
// summary fields are parsed once, the first time list() meets it.
//
// Routes (handle_viewer):
//   GET /ui                   the page (text/html, self-contained)
//   GET /api/traces           summaries, newest first, as
//                             {"last_seq":N,"more":bool,"traces":[...]};
//                             parameters: q (case-insensitive substring of the
//                             trace id, session, conversation, user id, or the
//                             names, inputs, outputs and errors of its events),
//                             session, conversation, user (exact), errors=1
//                             (traces with an error event or error status),
//                             limit (default 100, at most 1000), since=<seq>
//                             (only entries added after that sequence number)
//   GET /api/traces/<id>      the full latest document (404 if unknown)
// A method other than GET on these paths answers 405; a malformed parameter
// 400. Every other path is left to the caller (handle_viewer returns false).
//
// Ownership: add() copies what it keeps; get() hands out shared, immutable
// document text that stays valid after eviction.
// Thread safety: every method may be called from any thread; list() parses
// outside the lock; under it, only summaries and pointers are copied.
// Errors: a document that cannot be a JSON object (not within braces), or is
// larger than the byte bound, is rejected: add() returns false and it is
// counted. One that is within braces but not JSON is dropped and counted as
// rejected when list() parses it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "agent/admin.h"

namespace sidetrace::agent {

struct RecentTracesOptions {
  size_t max_traces = 1000;
  size_t max_bytes = 8u << 20;  // document text plus its search text
};

// What the list shows of a trace. Strings are empty when the document has
// null there.
struct TraceSummary {
  std::string trace_id;
  uint32_t revision = 0;
  uint64_t seq = 0;
  std::optional<uint64_t> start_ts;  // ns since the Unix epoch
  std::optional<double> duration_ms;
  std::string status;  // "ok", "error", "unfinished"
  bool partial = false;
  std::string conversation_id, session_id, user_id;
  std::string root_type, root_name;  // the first root event
  std::string input_preview;         // its input, as text, at most kPreviewBytes
  size_t events = 0;                 // all events, nested ones included
  size_t errors = 0;                 // events with status "error"
  size_t feedback = 0;

  static constexpr size_t kPreviewBytes = 160;
};

struct TraceQuery {
  std::string q;  // matched case-insensitively (ASCII folding)
  std::string session, conversation, user;
  bool errors_only = false;
  size_t limit = 100;
  uint64_t since = 0;
};

struct TraceList {
  uint64_t last_seq = 0;  // the highest sequence number given out so far
  bool more = false;      // `limit` cut the list short
  std::vector<TraceSummary> traces;
};

struct RecentTracesStats {
  uint64_t traces = 0;    // held now
  uint64_t bytes = 0;     // held now
  uint64_t added = 0;     // accepted add() calls
  uint64_t evicted = 0;   // entries dropped to stay within the bounds
  uint64_t stale = 0;     // add() of a revision not newer than the held one
  uint64_t rejected = 0;  // add() of a malformed or oversized document
};

class RecentTraces {
 public:
  explicit RecentTraces(RecentTracesOptions options = {});
  RecentTraces(const RecentTraces&) = delete;
  RecentTraces& operator=(const RecentTraces&) = delete;

  // Keeps `document` (shared, never copied) as the latest revision of
  // `trace_id`. Returns false when it was ignored (stale) or rejected (see
  // Errors above; a null document is rejected).
  bool add(const std::string& trace_id, uint32_t revision,
           std::shared_ptr<const std::string> document);
  bool add(const std::string& trace_id, uint32_t revision, std::string document);

  TraceList list(const TraceQuery& query) const;

  // The latest document of `trace_id`, or null when it is not held.
  std::shared_ptr<const std::string> get(const std::string& trace_id) const;

  RecentTracesStats stats() const;

 private:
  struct Entry {
    TraceSummary summary;  // trace_id, revision and seq only until summarised
    std::shared_ptr<const std::string> document;
    std::string haystack;  // lowercase search text
    size_t bytes = 0;
    bool summarised = false;
    bool malformed = false;
  };

  void evict_locked() const;

  const RecentTracesOptions opts_;
  // Mutable: list() replaces entries with their summarised copies.
  mutable std::mutex mu_;
  mutable std::map<uint64_t, std::shared_ptr<const Entry>> by_seq_;
  mutable std::unordered_map<std::string, uint64_t> by_id_;
  uint64_t next_seq_ = 1;
  mutable size_t bytes_ = 0;
  mutable RecentTracesStats stats_;
};

// Serves the viewer's routes (see above) into `out`. Returns false, leaving
// `out` untouched, for a path it does not own. Quick: no I/O, no parsing of
// stored documents.
bool handle_viewer(const RecentTraces& traces, const std::string& method, const std::string& target,
                   AdminResponse* out);

// The summary as the API writes it (one JSON object).
std::string summary_json(const TraceSummary& s);

// Percent-decoding of a query component ('+' is a space). Returns false on a
// malformed escape.
bool url_decode(const std::string& in, std::string* out);

}  // namespace sidetrace::agent

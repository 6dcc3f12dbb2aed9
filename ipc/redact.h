// Redaction and size limits for accepted messages, applied before anything is
// stored (docs/redaction.md).
//
// A Redactor rewrites the string values found inside selected top-level keys
// of a protocol-v1 message (by default input, output, attrs, metadata, error
// and feedback text; nested maps and arrays are walked, map keys are left
// alone, non-string values are never touched):
//   - built-in detectors, enabled by name: "api_keys", "bearer_tokens",
//     "emails", "card_numbers" (13-19 digits passing the Luhn check);
//   - user rules: a regular expression (Perl/ECMAScript syntax, Boost.Regex)
//     and a replacement (default "[REDACTED:<rule name>]"; $1.. and $& refer to
//     the match);
//   - a per-string size limit: a string longer than `max_field_bytes` is cut
//     at a UTF-8 boundary and ends with "…[truncated N bytes]"; the result,
//     marker included, is at most `max_field_bytes` long.
// Detectors run first, then user rules in order, then the size limit.
// Applying a Redactor to its own output changes nothing.
//
// Thread safety: a Redactor is immutable after create(); apply() is const and
// may run on any number of threads at once. To change the rules at run time,
// build a new Redactor and swap it in through a RedactorSlot.
//
// Errors: create() reports a bad option through its return value (no throw).
// apply() never throws; on an internal failure (bytes that are not a msgpack
// map, a user pattern too complex for an input) the message is left exactly
// as it was and the failure is counted and logged (rate limited).
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "ipc/message.h"

namespace sidetrace::ipc {

struct RedactRule {
  std::string name;         // counters and the default replacement use it
  std::string pattern;      // Boost.Regex, Perl syntax
  std::string replacement;  // empty: "[REDACTED:<name>]"
};

struct RedactOptions {
  // Built-in detectors by name: api_keys, bearer_tokens, emails, card_numbers.
  std::vector<std::string> detectors;
  std::vector<RedactRule> rules;
  // Top-level keys whose string values are rewritten. The routing and timing
  // keys (v, kind, trace_id, id, parent_id, target_id, ts, end_ts,
  // latency_ms, status, score) may not be listed.
  std::vector<std::string> fields = {"input", "output", "attrs", "metadata", "error", "text"};
  // Longest string kept whole inside `fields`; 0 = no limit, else >= 64.
  size_t max_field_bytes = 0;
};

// Plain counter values (a snapshot).
struct RedactCounters {
  uint64_t messages_checked = 0;            // apply() calls
  uint64_t messages_redacted = 0;           // messages whose bytes were rewritten
  uint64_t fields_truncated = 0;            // strings cut by max_field_bytes
  uint64_t bytes_removed = 0;               // bytes cut by max_field_bytes
  uint64_t failures = 0;                    // messages left unchanged by an internal failure
  std::map<std::string, uint64_t> matches;  // rule or detector name -> replacements
};

// Counters shared by every Redactor that reports into it (they survive a
// reload). Thread-safe; cheap when nothing matches.
class RedactStats {
 public:
  RedactCounters snapshot() const;

 private:
  friend class Redactor;
  std::atomic<uint64_t> checked_{0}, redacted_{0}, truncated_{0}, bytes_removed_{0}, failures_{0};
  mutable std::mutex mu_;
  std::map<std::string, uint64_t> matches_;
};

class Redactor {
 public:
  // Validates `options` and compiles the rules. On a bad option (unknown
  // detector, invalid pattern, empty rule name, forbidden field,
  // max_field_bytes below 64) returns nullptr with a message in `error`.
  static std::shared_ptr<const Redactor> create(const RedactOptions& options, std::string* error);

  ~Redactor();
  Redactor(const Redactor&) = delete;
  Redactor& operator=(const Redactor&) = delete;

  // Rewrites `m.raw` when a rule matches or a string is too long; returns
  // whether it did. Everything outside the rewritten strings stays
  // byte-identical (map and array headers included); the routing fields of
  // `m` are never changed. `stats` may be null. Never throws.
  bool apply(Message& m, RedactStats* stats) const;

  // Whether this Redactor can change anything at all (a detector, a rule or
  // a size limit is configured).
  bool active() const;

  struct Impl;

 private:
  explicit Redactor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Holds the Redactor in force; the agent swaps in a new one on a config
// reload while the writer thread keeps applying. Thread-safe.
//
// A mutex guards the pointer, not std::atomic<std::shared_ptr>: libstdc++ 12
// releases that one's internal lock after a load with a relaxed store, so a
// later store is not ordered after the load's read (ThreadSanitizer reports
// it). The lock is held only to copy the pointer, never while applying.
class RedactorSlot {
 public:
  explicit RedactorSlot(std::shared_ptr<const Redactor> r = nullptr) : current_(std::move(r)) {}
  void store(std::shared_ptr<const Redactor> r) {
    std::lock_guard lock(mu_);
    current_.swap(r);
    // The old Redactor (now in r) is released after the lock.
  }
  std::shared_ptr<const Redactor> load() const {
    std::lock_guard lock(mu_);
    return current_;
  }

  // Applies the current Redactor (none: nothing changes). Never throws.
  bool apply(Message& m, RedactStats* stats) const {
    std::shared_ptr<const Redactor> r = load();
    return r ? r->apply(m, stats) : false;
  }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const Redactor> current_;
};

}  // namespace sidetrace::ipc

// Background operations of the admin endpoint. A request whose work may take
// long (a dead-letter replay or purge, a reload) starts an operation and is
// answered at once; the operation's state is then read by id while it runs
// and for a while after it ended:
//
//   POST <route that starts one>  202 Accepted, Location: /operations/<id>,
//                                 the operation as JSON; or 200 with the one
//                                 of the same kind that is already running
//   GET  /operations              every operation kept, running first, then
//                                 the finished ones, the last started first
//   GET  /operations/<id>         one operation; 404 when unknown or
//                                 forgotten
//
// An operation (JSON): {"id" (a string), "kind", "state": "running" | "ok" |
// "failed",
// "done", "total" (records, for the kinds that count them), "message" (what
// it did, or why it failed; "" while running), "started_unix_ms",
// "elapsed_ms"}.
//
// At most one operation of each kind runs at a time: starting a kind that
// runs returns the running one, so that a client that asks twice (a retry
// after a timeout) follows the same work instead of queueing more. The last
// `keep_finished` operations to finish are kept; older ones are forgotten.
//
// Each running operation has a thread of its own (at most one per kind); what
// its body throws ends it as failed, with the exception's text.
//
// Thread safety: every method may be called from any thread. close() (and
// the destructor) waits for the running bodies.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "agent/admin.h"
#include "common/clock.h"

namespace sidetrace::agent {

enum class OperationState : uint8_t { kRunning, kOk, kFailed };

std::string_view operation_state_name(OperationState s);

struct OperationSnapshot {
  uint64_t id = 0;
  std::string kind;
  OperationState state = OperationState::kRunning;
  bool counted = false;  // the body reports done/total
  uint64_t done = 0;
  uint64_t total = 0;  // at least `done`
  std::string message;
  uint64_t started_unix_ms = 0;
  uint64_t elapsed_ms = 0;  // so far, or until it ended
};

// The operation as the JSON object described above.
std::string operation_json(const OperationSnapshot& op);

// What a body reports while it runs. Cheap: atomics.
class OperationProgress {
 public:
  void set_total(uint64_t n);
  void set_done(uint64_t n);

 private:
  friend class Operations;
  std::atomic<uint64_t> done_{0};
  std::atomic<uint64_t> total_{0};
  std::atomic<bool> counted_{false};
};

// How a body ended: ok, with what it did, or failed, with why.
struct OperationOutcome {
  bool ok = true;
  std::string message;
};

using OperationBody = std::function<OperationOutcome(OperationProgress&)>;

inline constexpr size_t kKeepFinishedOperations = 16;

class Operations {
 public:
  explicit Operations(size_t keep_finished = kKeepFinishedOperations,
                      const Clock& clock = system_clock());
  ~Operations();
  Operations(const Operations&) = delete;
  Operations& operator=(const Operations&) = delete;

  struct Started {
    OperationSnapshot op;
    bool created = false;  // false: `op` is the one of that kind already running
  };
  // Starts `body` as an operation of `kind` on a thread of its own, unless
  // one of that kind runs. nullopt after close().
  std::optional<Started> start(std::string_view kind, OperationBody body);

  std::optional<OperationSnapshot> get(uint64_t id) const;
  std::vector<OperationSnapshot> list() const;

  // Refuses new operations and waits for the running ones to end.
  void close();

 private:
  struct Record;
  OperationSnapshot snapshot(const Record& r) const;
  void finish(const std::shared_ptr<Record>& r, OperationOutcome outcome);

  const size_t keep_finished_;
  const Clock& clock_;
  mutable std::mutex mu_;
  bool closed_ = false;
  uint64_t next_id_ = 1;
  std::vector<std::shared_ptr<Record>> running_;
  std::vector<std::shared_ptr<Record>> finished_;            // oldest first
  std::map<std::string, std::thread, std::less<>> threads_;  // the last thread of each kind
};

// The answer to a POST that started (or found running) an operation; 503
// when `started` is empty (the agent is stopping).
AdminResponse operation_started(const std::optional<Operations::Started>& started);

// Serves GET /operations and GET /operations/<id>; false for other targets.
bool handle_operations(const Operations& ops, const std::string& method, const std::string& target,
                       AdminResponse* r);

}  // namespace sidetrace::agent

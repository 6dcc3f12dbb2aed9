// The writer: the one thread that moves accepted messages from the intake
// queue into the durable store.
//
// It takes everything queued at once (BoundedQueue::pop_all), and commits it
// in group commits of at most `max_group_messages` messages: one atomic
// RocksDB write per group, fsync'ed per write in SyncMode::kFsync (the group
// bounds the cost). After each commit it counts the messages persisted,
// records the receive->durable latency of each (wall clock at commit minus
// Message::recv_ns), and hands the committed (trace_id, seq, recv_ns, and the
// message's bytes, moved out of it: the group is done with them) to the sink
// (the trace assembler).
//
// Refusals, each counted and logged (rate limited):
//   - the quota is reached (EventLog::ensure_room() says Full): the group is
//     dropped (drop_newest, or drop_oldest with nothing left to drop);
//   - the disk is full or failing (append(), or making room in ensure_room(),
//     returns NoSpace/IOError): the group
//     is dropped, and the writer calls EventLog::resume() before each later group
//     (with a growing back-off), dropping groups until it succeeds.
//     Writing resumes by itself once space returns. A write of another part
//     of the agent that failed (EventLog::needs_resume()) is resumed the same
//     way, also while no messages arrive.
//
// Receipts: a message that carries an ipc::Receipt (Message::receipt) is
// settled exactly once, right after the group that holds it is done with:
// kStored once the commit returned (synced in SyncMode::kFsync), kFull when
// the quota refused the group, kFailed when the disk was full or failing or
// the message could not be stored. Messages next to each other that share a
// receipt are settled in one call. Every message taken from the queue is
// settled, also those committed by stop().
//
// Before a message joins a group, the optional `transform` (redaction, see
// ipc/redact.h) may rewrite it on the writer thread: nothing it removes ever
// reaches the store. Messages it changed are counted.
//
// Thread safety: start()/stop() from one owning thread; stats() from any.
// The sink and the transform run on the writer thread and must not block.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <thread>

#include "buffer/event_log.h"
#include "buffer/histogram.h"
#include "common/bounded_queue.h"
#include "common/clock.h"
#include "common/rate_limited_log.h"
#include "config/defaults.h"
#include "ipc/message.h"

namespace sidetrace::buffer {

struct WriterOptions {
  size_t max_group_messages = 8192;
  size_t max_group_bytes = 2 << 20;
  // How long the first message of a group may wait (from its receive time)
  // for others to join the commit, unless `commit_bytes` of messages are in
  // hand: a sustained load fills groups without waiting, while messages that
  // arrive one by one share a commit (and its sync) instead of paying one
  // each. The queue's wake weight should be `commit_bytes`, so that it wakes
  // the waiting writer. 0 = commit at once (the agent's default is
  // config::defaults::kBufferCommitDelayMs).
  std::chrono::milliseconds commit_delay{0};
  size_t commit_bytes = config::defaults::kBufferCommitBytes;
  // After a write failure, EventLog::resume() is tried after `resume_interval`,
  // then at doubling intervals up to `max_resume_interval`.
  std::chrono::milliseconds resume_interval{100};
  std::chrono::milliseconds max_resume_interval{5000};
  // Applied to each message before it is stored; returns whether it changed
  // the message. Must not throw (a throw is counted and the message stored as
  // the transform left it). Must keep trace_id; empty = no transform.
  std::function<bool(ipc::Message&)> transform;
  // Called on the writer thread each time it is done with what it took from
  // the queue (committed or dropped), with the raw bytes of those messages.
  // Must not block or throw; empty = none.
  std::function<void(size_t bytes)> after_round;
};

struct WriterStats {
  uint64_t persisted = 0;         // messages committed
  uint64_t commits = 0;           // group commits
  uint64_t dropped_full = 0;      // refused: quota reached
  uint64_t dropped_no_space = 0;  // lost: the disk was full
  uint64_t dropped_io_error = 0;  // lost: another write error
  uint64_t dropped_invalid = 0;   // refused: not storable (trace_id too long)
  uint64_t transformed = 0;       // messages the transform changed
  uint64_t transform_errors = 0;  // transform calls that threw
  bool degraded = false;          // the last write failed; waiting to resume
  // How long the writer has been working on what it last took from the queue
  // (redaction, the quota check, the store's write); zero when it waits for
  // messages. Milliseconds normally: a value of many seconds means the store
  // is stuck and nothing more is being persisted.
  uint64_t busy_ns = 0;
};

class Writer {
 public:
  // The sink may move from the notices it is given (their `raw` bytes).
  using Sink = std::function<void(std::span<Committed>)>;

  // Borrows `store`, `queue` and `clock`; they must outlive the writer.
  Writer(EventLog& store, BoundedQueue<ipc::MessageBatch>& queue, Sink sink,
         const Clock& clock = system_clock(), WriterOptions options = {});
  ~Writer();  // stops

  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  void start();
  // Closes the queue, commits what is left in it, joins the thread.
  void stop();

  WriterStats stats() const;

  // The store's watermark: every message received (Message::recv_ns) before
  // it has been committed, or dropped, and handed to the sink. `now` when
  // nothing is queued or in the writer's hands; otherwise the newest receive
  // time of what the writer last finished with (the queue is in arrival
  // order). A trace is not quiet while messages received before its quiet
  // deadline may still be on their way to the store.
  uint64_t watermark_ns(uint64_t now) const;
  const LatencyHistogram& latency() const { return latency_; }

 private:
  void run();
  // Waits, within the commit delay, for more messages to join `batches`.
  void linger(std::vector<ipc::MessageBatch>& batches);
  // Both leave the committed messages without their bytes (handed to the sink).
  void commit(std::span<ipc::Message> group, size_t bytes);
  void store_group(std::span<ipc::Message> group, size_t bytes);
  // False while the store is failing and not (yet) resumed; resumes it when
  // due (growing back-off).
  bool usable();

  EventLog& store_;
  BoundedQueue<ipc::MessageBatch>& queue_;
  Sink sink_;
  const Clock& clock_;
  const WriterOptions opts_;
  std::thread thread_;
  RateLimitedLog log_;
  LatencyHistogram latency_;
  std::vector<Committed> committed_;
  uint64_t next_resume_ns_ = 0;
  std::chrono::nanoseconds backoff_{0};

  std::atomic<uint64_t> persisted_{0}, commits_{0}, dropped_full_{0}, dropped_no_space_{0},
      dropped_io_error_{0}, dropped_invalid_{0}, transformed_{0}, transform_errors_{0};
  std::atomic<bool> degraded_{false};
  std::atomic<uint64_t> busy_since_ns_{0};  // clock_.mono_ns(); 0 = waiting
  std::atomic<uint64_t> done_recv_ns_{0};   // see watermark_ns()
};

}  // namespace sidetrace::buffer

#include "buffer/writer.h"

#include <fmt/format.h>

#include <algorithm>

#include "common/thread.h"

namespace sidetrace::buffer {

namespace {

// Tells the receipts of `group` what became of it: one call per run of
// neighbouring messages that share a receipt (a request's messages arrive
// together).
void settle(std::span<ipc::Message> group, ipc::Receipt::Outcome outcome) {
  for (size_t i = 0; i < group.size();) {
    ipc::Receipt* r = group[i].receipt.get();
    size_t j = i + 1;
    if (r == nullptr) {
      i = j;
      continue;
    }
    while (j < group.size() && group[j].receipt.get() == r)
      ++j;
    r->settle(outcome, j - i);
    i = j;
  }
}

}  // namespace

Writer::Writer(EventLog& store, BoundedQueue<ipc::MessageBatch>& queue, Sink sink,
               const Clock& clock, WriterOptions options)
    : store_(store),
      queue_(queue),
      sink_(std::move(sink)),
      clock_(clock),
      opts_(options),
      log_(10, std::chrono::seconds(10), clock) {}

Writer::~Writer() {
  stop();
}

void Writer::start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { run_thread("st-writer", [this] { run(); }); });
}

void Writer::stop() {
  queue_.close();
  if (thread_.joinable()) thread_.join();
}

WriterStats Writer::stats() const {
  WriterStats s;
  s.persisted = persisted_.load();
  s.commits = commits_.load();
  s.dropped_full = dropped_full_.load();
  s.dropped_no_space = dropped_no_space_.load();
  s.dropped_io_error = dropped_io_error_.load();
  s.dropped_invalid = dropped_invalid_.load();
  s.transformed = transformed_.load();
  s.transform_errors = transform_errors_.load();
  s.degraded = degraded_.load();
  uint64_t since = busy_since_ns_.load();
  uint64_t now = clock_.mono_ns();
  s.busy_ns = since && now > since ? now - since : 0;
  return s;
}

uint64_t Writer::watermark_ns(uint64_t now) const {
  if (busy_since_ns_.load() == 0 && queue_.weight() == 0) return now;
  return std::min(now, done_recv_ns_.load());
}

void Writer::run() {
  std::vector<ipc::MessageBatch> batches;
  std::vector<ipc::Message> group;
  for (;;) {
    batches.clear();
    // About one group at a time: what waits for the store stays in the queue,
    // under its bound, and not in the writer's hands.
    // Idle, the writer wakes by itself only to resume a failed store: often
    // while it is failing, once a second to notice a write of another part
    // of the agent (the assembler, delivery) that failed.
    const auto idle_wait =
        degraded_.load() ? std::chrono::milliseconds(100) : std::chrono::milliseconds(1000);
    bool open = queue_.pop_upto(batches, opts_.max_group_bytes, idle_wait);
    // With nothing to write, a failed store is still resumed: the assembler
    // and delivery need it too.
    if (batches.empty() && (degraded_.load() || store_.needs_resume())) usable();
    if (!batches.empty()) {
      // Busy from here: what the writer holds while it lingers is not stored.
      busy_since_ns_.store(std::max<uint64_t>(clock_.mono_ns(), 1));
      if (open) linger(batches);
    }
    size_t bytes = 0;
    size_t round_bytes = 0;
    for (auto& batch : batches) {
      for (auto& m : batch) {
        if (m.trace_id.empty() || m.trace_id.size() > 255) {
          dropped_invalid_.fetch_add(1);
          log_.log(spdlog::level::warn,
                   "buffer: dropped a message whose trace_id cannot be stored");
          settle(std::span(&m, 1), ipc::Receipt::Outcome::kFailed);
          continue;
        }
        if (opts_.transform) {
          try {
            if (opts_.transform(m)) transformed_.fetch_add(1);
          } catch (const std::exception& e) {
            transform_errors_.fetch_add(1);
            log_.log(spdlog::level::err, fmt::format("buffer: the transform failed: {}", e.what()));
          }
        }
        bytes += m.trace_id.size() + m.raw.size() + 40;
        round_bytes += m.raw.size();
        group.push_back(std::move(m));
        if (group.size() >= opts_.max_group_messages || bytes >= opts_.max_group_bytes) {
          commit(group, bytes);
          group.clear();
          bytes = 0;
        }
      }
    }
    if (!group.empty()) commit(group, bytes);
    group.clear();
    busy_since_ns_.store(0);
    if (!batches.empty() && opts_.after_round) opts_.after_round(round_bytes);
    if (!open) return;
  }
}

void Writer::linger(std::vector<ipc::MessageBatch>& batches) {
  if (opts_.commit_delay.count() <= 0) return;
  uint64_t oldest = UINT64_MAX;
  size_t bytes = 0;
  for (const auto& batch : batches) {
    for (const auto& m : batch) {
      oldest = std::min(oldest, m.recv_ns);
      bytes += m.raw.size();
    }
  }
  const uint64_t due =
      oldest + static_cast<uint64_t>(std::chrono::nanoseconds(opts_.commit_delay).count());
  const uint64_t now = clock_.now_ns();
  if (bytes >= opts_.commit_bytes || now >= due) return;
  // Messages arriving meanwhile do not wake the writer: only the delay's end,
  // a full group's weight in the queue, or the queue's close do.
  queue_.wait_for_weight(opts_.commit_bytes, std::chrono::nanoseconds(due - now));
  queue_.pop_upto(batches, opts_.max_group_bytes - bytes, std::chrono::milliseconds(0));
}

bool Writer::usable() {
  if (!degraded_.load()) {
    if (!store_.needs_resume()) return true;
    // A write of another part of the agent (the assembler, delivery) failed:
    // RocksDB refuses every write until it is resumed, so resume it now.
    degraded_.store(true);
    backoff_ = opts_.resume_interval;
    next_resume_ns_ = 0;
  }
  uint64_t now = clock_.mono_ns();
  if (now < next_resume_ns_) return false;
  backoff_ = std::min<std::chrono::nanoseconds>(backoff_ * 2, opts_.max_resume_interval);
  next_resume_ns_ = now + static_cast<uint64_t>(backoff_.count());
  Status r = store_.resume();
  if (!r.ok()) {
    log_.log(spdlog::level::warn,
             fmt::format("buffer: the store is still failing ({})", r.ToString()));
    return false;
  }
  degraded_.store(false);
  log_.log(spdlog::level::info, "buffer: the store accepts writes again");
  return true;
}

void Writer::commit(std::span<ipc::Message> group, size_t bytes) {
  store_group(group, bytes);
  // Committed or dropped, the group is done with; its notices (if any) are
  // with the sink already.
  uint64_t newest = 0;
  for (const ipc::Message& m : group)
    newest = std::max(newest, m.recv_ns);
  if (newest > done_recv_ns_.load()) done_recv_ns_.store(newest);
}

void Writer::store_group(std::span<ipc::Message> group, size_t bytes) {
  uint64_t n = group.size();
  if (!usable()) {
    dropped_no_space_.fetch_add(n);
    settle(group, ipc::Receipt::Outcome::kFailed);
    return;
  }
  Status s = store_.ensure_room(bytes);
  if (s.IsFull()) {
    dropped_full_.fetch_add(n);
    log_.log(spdlog::level::warn,
             fmt::format("buffer: full ({}); dropped {} new messages", s.message(), n));
    settle(group, ipc::Receipt::Outcome::kFull);
    return;
  }
  committed_.clear();
  if (s.ok()) s = store_.append(group, &committed_);
  if (!s.ok()) {
    // Degraded before the drop is counted: whoever sees the count sees the
    // state that explains it.
    if (s.code() == Status::Code::kInvalidArgument) {
      dropped_invalid_.fetch_add(n);
    } else if (s.IsNoSpace()) {
      degraded_.store(true);
      dropped_no_space_.fetch_add(n);
    } else {
      degraded_.store(true);
      dropped_io_error_.fetch_add(n);
    }
    backoff_ = opts_.resume_interval;
    next_resume_ns_ = clock_.mono_ns() + static_cast<uint64_t>(backoff_.count());
    log_.log(spdlog::level::err,
             fmt::format("buffer: write failed ({}); dropped {} messages", s.ToString(), n));
    settle(group, ipc::Receipt::Outcome::kFailed);
    return;
  }
  uint64_t now = clock_.now_ns();
  for (const ipc::Message& m : group)
    latency_.record(now > m.recv_ns ? now - m.recv_ns : 0);
  persisted_.fetch_add(n);
  commits_.fetch_add(1);
  settle(group, ipc::Receipt::Outcome::kStored);
  if (sink_) {
    // The stored bytes go with the notices (the assembler builds quiet traces
    // from them without reading them back); append() gives one notice per
    // message, in order.
    for (size_t i = 0; i < committed_.size() && i < group.size(); ++i)
      committed_[i].raw = std::move(group[i].raw);
    sink_(committed_);
  }
}

}  // namespace sidetrace::buffer

#include "trace/assembler.h"

#include <fmt/format.h>

#include <algorithm>

#include "trace/reconstruct.h"

namespace sidetrace::trace {

namespace {

uint64_t ns(std::chrono::nanoseconds d) {
  return static_cast<uint64_t>(d.count());
}

uint64_t minus(uint64_t now, uint64_t d) {
  return now > d ? now - d : 0;
}

}  // namespace

Assembler::Assembler(buffer::Store& store, const Clock& clock, AssemblerOptions options)
    : store_(store),
      clock_(clock),
      opts_(options),
      log_(10, std::chrono::seconds(10), clock),
      queue_(options.queue_bytes) {}

Assembler::~Assembler() {
  stop();
}

void Assembler::on_committed(std::span<const buffer::Committed> committed) {
  if (committed.empty()) return;
  size_t weight = 0;
  for (const auto& c : committed)
    weight += c.trace_id.size() + sizeof(buffer::Committed);
  std::vector<buffer::Committed> copy(committed.begin(), committed.end());
  notifications_.fetch_add(committed.size());
  if (!queue_.try_push(copy, weight)) {
    // The pending column family still holds them: a rescan finds them.
    notifications_dropped_.fetch_add(committed.size());
    resync_.store(true);
  }
}

buffer::Status Assembler::recover() {
  need_rescan_ = true;
  next_rescan_ns_ = 0;
  uint64_t now = clock_.now_ns();
  if (!rescan(now)) return buffer::Status::IOError("rescanning pending failed");
  return buffer::Status::Ok();
}

void Assembler::schedule(const std::string& trace_id, Open& o, uint64_t deadline) {
  if (o.deadline_ns != 0) timers_.erase({o.deadline_ns, trace_id});
  o.deadline_ns = deadline;
  timers_.emplace(deadline, trace_id);
}

void Assembler::forget(const std::string& trace_id) {
  auto it = open_.find(trace_id);
  if (it == open_.end()) return;
  timers_.erase({it->second.deadline_ns, trace_id});
  age_.erase({it->second.first_ns, trace_id});
  open_.erase(it);
  open_n_.store(open_.size());
}

void Assembler::take(const buffer::Committed& c, uint64_t now) {
  auto [it, inserted] = open_.try_emplace(c.trace_id);
  Open& o = it->second;
  if (inserted) {
    o.first_ns = c.recv_ns;
    age_.emplace(o.first_ns, c.trace_id);
  } else if (c.recv_ns < o.first_ns) {
    age_.erase({o.first_ns, c.trace_id});
    o.first_ns = c.recv_ns;
    age_.emplace(o.first_ns, c.trace_id);
  }
  // Quiet time counts from the last receive time, so that it means the same
  // whatever the notification delay, and after a restart.
  o.last_ns = std::max(o.last_ns, std::min(c.recv_ns, now));
  o.max_seq = std::max(o.max_seq, c.seq);
  o.min_seq = std::min(o.min_seq, c.seq);
  schedule(c.trace_id, o,
           std::min(o.last_ns + ns(opts_.quiet_period), o.first_ns + ns(opts_.max_open)));
  if (inserted && open_.size() > opts_.max_open_traces) {
    // Spill the oldest open trace from memory; pending keeps it, and a
    // rescan brings it back when there is room.
    std::string victim = age_.begin()->second;
    rescan_from_ = std::min(rescan_from_, open_.at(victim).min_seq);
    forget(victim);
    spilled_ = true;
    spilled_n_.fetch_add(1);
  }
  open_n_.store(open_.size());
}

bool Assembler::rescan(uint64_t now) {
  rescans_.fetch_add(1);
  // A full rescan after lost notifications or a restart; after a spill, only
  // from the first entry that may not be held, so that a large backlog is not
  // read again from its start every time.
  uint64_t from = need_rescan_ ? 0 : rescan_from_;
  need_rescan_ = false;
  spilled_ = false;
  rescan_from_ = UINT64_MAX;
  next_rescan_ns_ = now + ns(opts_.retry_interval);
  if (from == UINT64_MAX) return true;
  std::vector<buffer::Committed> page;
  for (;;) {
    page.clear();
    buffer::Status s = store_.scan_pending(from, 4096, &page);
    if (!s.ok()) {
      store_error(s, "rescanning pending");
      need_rescan_ = true;
      return false;
    }
    for (const auto& c : page) {
      auto it = open_.find(c.trace_id);
      if (it == open_.end()) {
        if (open_.size() >= opts_.max_open_traces) {
          // No room: the rest waits for the next rescan, oldest first.
          spilled_ = true;
          rescan_from_ = std::min(rescan_from_, c.seq);
          return true;
        }
        take(c, now);
      } else if (c.seq > it->second.max_seq || c.recv_ns < it->second.first_ns ||
                 c.seq < it->second.min_seq) {
        Open& o = it->second;
        o.min_seq = std::min(o.min_seq, c.seq);
        if (c.recv_ns < o.first_ns) {
          age_.erase({o.first_ns, c.trace_id});
          o.first_ns = c.recv_ns;
          age_.emplace(o.first_ns, c.trace_id);
          schedule(c.trace_id, o, std::min(o.deadline_ns, o.first_ns + ns(opts_.max_open)));
        }
        o.max_seq = std::max(o.max_seq, c.seq);
      }
    }
    if (page.size() < 4096) return true;
    from = page.back().seq + 1;
  }
}

void Assembler::process(const std::string& trace_id, uint64_t now, std::vector<Prepared>* out) {
  auto it = open_.find(trace_id);
  if (it == open_.end()) return;
  Open& o = it->second;

  buffer::TraceState st;
  buffer::Status s = store_.get_state(trace_id, &st);
  if (!s.ok() && !s.IsNotFound()) {
    store_error(s, "reading a trace state");
    schedule(trace_id, o, now + ns(opts_.retry_interval));
    return;
  }
  if (s.IsNotFound()) st = buffer::TraceState{};
  std::vector<buffer::StoredEvent> events;
  s = store_.read_trace(trace_id, &events);
  if (!s.ok()) {
    store_error(s, "reading a trace");
    schedule(trace_id, o, now + ns(opts_.retry_interval));
    return;
  }
  std::vector<uint64_t> fresh;
  std::vector<StoredMessage> msgs;
  msgs.reserve(events.size());
  uint64_t max_seq = st.max_seq;
  for (const auto& e : events) {
    msgs.push_back(StoredMessage{e.seq, e.recv_ns, e.raw});
    if (e.seq > st.max_seq) fresh.push_back(e.seq);
    max_seq = std::max(max_seq, e.seq);
  }
  if (fresh.empty()) {
    // Everything notified was already folded into an emitted revision.
    forget(trace_id);
    return;
  }
  bool emitted_before = st.revision > 0;
  bool max_open_reached = now >= o.first_ns + ns(opts_.max_open);
  BuildOptions bo;
  bo.revision = st.revision + 1;
  bo.partial = st.events_deleted;
  BuildResult r = build_trace(trace_id, msgs, bo);
  if (!r.complete) {
    if (!emitted_before && !max_open_reached) {
      schedule(trace_id, o, o.first_ns + ns(opts_.max_open));
      return;
    }
    bo.mark_unfinished = true;
    r = build_trace(trace_id, msgs, bo);
  }

  buffer::Emission e;
  e.trace_id = trace_id;
  e.expected_generation = st.generation;
  e.state = st;
  e.state.revision = bo.revision;
  if (e.state.first_emit_ns == 0) e.state.first_emit_ns = now;
  e.state.last_emit_ns = now;
  e.state.max_seq = max_seq;
  e.pending_seqs = std::move(fresh);
  e.document = std::move(r.document);
  out->push_back(Prepared{std::move(e), bo.mark_unfinished});
}

size_t Assembler::emit(std::vector<Prepared>* batch, uint64_t now) {
  if (batch->empty()) return 0;
  std::vector<buffer::Emission> es;
  es.reserve(batch->size());
  // The time of this write, not of the round's start: the exporter batches
  // by it, and a round may last a while.
  const uint64_t emitted_ns = clock_.now_ns();
  for (Prepared& p : *batch) {
    p.emission.emitted_ns = emitted_ns;
    es.push_back(std::move(p.emission));
  }
  std::vector<buffer::Status> results(es.size());
  std::vector<uint64_t> outbox_seqs(es.size());
  buffer::Status written = store_.emit_many(es, results, outbox_seqs);
  size_t emitted = 0;
  for (size_t i = 0; i < es.size(); ++i) {
    const buffer::Emission& e = es[i];
    auto it = open_.find(e.trace_id);
    if (it == open_.end()) continue;
    buffer::Status s = written.ok() ? results[i] : written;
    if (s.code() == buffer::Status::Code::kBusy) {
      // The state changed under us (retention or quota): build again next round.
      schedule(e.trace_id, it->second, now);
      continue;
    }
    if (!s.ok()) {
      store_error(s, "emitting a trace revision");
      schedule(e.trace_id, it->second, now + ns(opts_.retry_interval));
      continue;
    }
    ++emitted;
    emitted_.fetch_add(1);
    const uint32_t revision = e.state.revision;
    if (opts_.on_emitted) opts_.on_emitted(e.trace_id, revision, e.document);
    if ((*batch)[i].unfinished) emitted_unfinished_.fetch_add(1);
    if (e.state.events_deleted) emitted_partial_.fetch_add(1);
    if (revision > 1) late_.fetch_add(1);
    forget(e.trace_id);
  }
  batch->clear();
  return emitted;
}

size_t Assembler::poll() {
  uint64_t now = clock_.now_ns();
  queue_.pop_all(inbox_, std::chrono::milliseconds(0));
  for (const auto& batch : inbox_) {
    for (const auto& c : batch)
      take(c, now);
  }
  inbox_.clear();
  if (resync_.exchange(false)) need_rescan_ = true;
  if ((need_rescan_ || spilled_) && now >= next_rescan_ns_) rescan(now);

  std::vector<std::string> due;
  for (auto it = timers_.begin(); it != timers_.end() && it->first <= now; ++it) {
    due.push_back(it->second);
  }
  // Revisions are written in groups: one store write for many traces.
  size_t emitted = 0;
  std::vector<Prepared> batch;
  for (const auto& id : due) {
    process(id, now, &batch);
    if (batch.size() >= opts_.emit_batch) emitted += emit(&batch, now);
  }
  emitted += emit(&batch, now);

  if (now >= next_retention_ns_) {
    next_retention_ns_ = now + ns(opts_.retention_interval);
    buffer::Status s = store_.expire(minus(now, ns(opts_.retain)),
                                     minus(now, ns(opts_.forget_after)), opts_.expire_batch);
    if (!s.ok()) store_error(s, "expiring retained traces");
  }
  return emitted;
}

void Assembler::start() {
  if (thread_.joinable()) return;
  stop_.store(false);
  thread_ = std::thread([this] {
    while (!stop_.load()) {
      queue_.pop_all(inbox_, opts_.tick);
      poll();
    }
  });
}

void Assembler::stop() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

AssemblerStats Assembler::stats() const {
  AssemblerStats s;
  s.notifications = notifications_.load();
  s.notifications_dropped = notifications_dropped_.load();
  s.rescans = rescans_.load();
  s.spilled = spilled_n_.load();
  s.open_traces = open_n_.load();
  s.emitted = emitted_.load();
  s.emitted_unfinished = emitted_unfinished_.load();
  s.emitted_partial = emitted_partial_.load();
  s.late_revisions = late_.load();
  s.store_errors = store_errors_.load();
  return s;
}

void Assembler::store_error(const buffer::Status& s, const char* what) {
  store_errors_.fetch_add(1);
  log_.log(spdlog::level::err, fmt::format("trace: {} failed: {}", what, s.ToString()));
}

}  // namespace sidetrace::trace

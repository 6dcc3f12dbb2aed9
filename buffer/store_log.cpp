// EventLog: group commits, the quota, and the log's front.
#include "buffer/detail/rocks_store.h"

#include <rocksdb/convenience.h>
#include <spdlog/spdlog.h>

#include <algorithm>

namespace sidetrace::buffer::detail {

Status RocksStore::append(std::span<const ipc::Message> msgs, std::vector<Committed>* out) {
  StoreLock db_lock(db_mu_);
  if (!db_) return unavailable();
  if (msgs.empty()) return Status::Ok();
  std::lock_guard lock(append_mu_);
  // One batch reused for every group commit: its buffer is allocated once.
  rocksdb::WriteBatch& b = append_batch_;
  b.Clear();
  int64_t live = 0;
  std::string key, head;
  // One run per trace: its messages take consecutive seqs (traces in the
  // order of their first message), with one pending record and one run
  // key for them all.
  std::unordered_map<std::string_view, AppendRun>& runs = append_runs_;
  runs.clear();
  for (size_t i = 0; i < msgs.size(); ++i) {
    const ipc::Message& m = msgs[i];
    if (m.trace_id.empty() || m.trace_id.size() > kMaxTraceIdBytes) {
      return Status::InvalidArgument("a message's trace_id is empty or longer than 255 bytes");
    }
    ++runs.try_emplace(m.trace_id, AppendRun{i}).first->second.n;
  }
  uint64_t next = next_seq_;
  for (size_t i = 0; i < msgs.size(); ++i) {
    AppendRun& r = runs.at(msgs[i].trace_id);
    if (r.first != i) continue;
    r.seq = next;
    next += r.n;
  }
  std::vector<uint64_t>& seqs = append_seqs_;
  seqs.resize(msgs.size());
  for (size_t i = 0; i < msgs.size(); ++i) {
    const ipc::Message& m = msgs[i];
    AppendRun& r = runs.at(m.trace_id);
    const uint64_t seq = r.seq + r.taken++;
    seqs[i] = seq;
    key = log_key(seq);
    head = log_value_head(m.recv_ns, m.trace_id);
    // The value is its head followed by the raw message, given in two
    // parts so that the message is copied once, into the batch.
    rocksdb::Slice key_part(key);
    rocksdb::Slice value_parts[2] = {rocksdb::Slice(head), rocksdb::Slice(m.raw)};
    b.Put(cfs_[kEvents], rocksdb::SliceParts(&key_part, 1), rocksdb::SliceParts(value_parts, 2));
    r.bytes += key.size() + head.size() + m.raw.size();
  }
  const uint64_t stored_ns = clock_.now_ns();
  for (const auto& [trace_id, r] : runs) {
    const ipc::Message& m = msgs[r.first];
    b.Put(cfs_[kPending], be64(r.seq), pending_value(m.recv_ns, r.n, stored_ns, trace_id));
    std::string rk = run_key(trace_id, r.seq);
    std::string rv = run_value(Run{r.seq, r.seq, r.n, clamp32(r.bytes)});
    b.Put(cfs_[kTraces], rk, rv);
    live += static_cast<int64_t>(r.bytes + pending_bytes(trace_id) + rk.size() + kRunValueBytes);
  }
  b.Put(cfs_[kTraces], kCounterEventNext, be64(next));
  b.Merge(cfs_[kTraces], kCounterLive, encode_i64(live));
  rocksdb::Status s = write(wo_, &b);
  if (!s.ok()) return from_rocks(s, "persisting events");
  next_seq_ = next;
  live_.fetch_add(static_cast<uint64_t>(live));
  out->reserve(out->size() + msgs.size());
  for (size_t i = 0; i < msgs.size(); ++i) {
    const ipc::Message& m = msgs[i];
    const AppendRun& r = runs.at(m.trace_id);
    out->push_back(Committed{m.trace_id, seqs[i], m.recv_ns, r.first == i ? r.n : uint32_t{0},
                             clamp32(m.raw.size())});
  }
  runs.clear();
  return Status::Ok();
}

Status RocksStore::ensure_room(uint64_t bytes) {
  StoreLock db_lock(db_mu_);
  if (!db_) return unavailable();
  if (live_.load() + bytes <= opts_.max_bytes) return Status::Ok();
  // Make a little more room than asked so that this does not run on every
  // commit while the store sits at its bound.
  uint64_t slack = std::min<uint64_t>(opts_.max_bytes / 64, 16 << 20);
  uint64_t target = opts_.max_bytes > bytes + slack ? opts_.max_bytes - bytes - slack : 0;
  // Retained events of traces that no outbox entry refers to first (they
  // only serve late revisions, whichever the policy); then, with
  // kDropOldest, the oldest outbox entries, after which the events they
  // referred to are retained events too.
  const bool drop_undelivered = opts_.when_full == WhenFull::kDropOldest;
  while (live_.load() > target) {
    // The log's front first: the retained traces received first go there,
    // passed over as they go (no second pass later to reclaim them).
    const uint64_t live = live_.load();
    Status s = drop_at_log_front(target);
    if (!s.ok()) return s;
    if (live_.load() < live) continue;
    uint64_t traces = 0;
    uint64_t events = 0;
    size_t keys = 0;
    s = drop_retained(UINT64_MAX, kDropRound, target, &traces, &events, &keys);
    if (!s.ok()) return s;
    counters_.dropped_retained_traces.fetch_add(traces);
    counters_.dropped_retained_events.fetch_add(events);
    if (keys > 0) continue;
    if (!drop_undelivered) break;
    uint64_t dropped = 0;
    s = drop_oldest_outbox(kDropRound, live_.load() - target, &dropped);
    if (!s.ok()) return s;
    if (dropped == 0) break;
    counters_.dropped_outbox_entries.fetch_add(dropped);
  }
  Status reclaimed = reclaim_log(Front::kReclaimForRoom);
  if (!reclaimed.ok()) return reclaimed;
  if (live_.load() + bytes <= opts_.max_bytes) return Status::Ok();
  if (!drop_undelivered) return Status::Full("buffer.max_bytes reached (drop_newest)");
  return Status::Full("buffer.max_bytes reached: only pending events remain");
}

Status RocksStore::drop_at_log_front(uint64_t target) {
  bool moved = false;
  {
    std::lock_guard append_lock(append_mu_);
    Status s = move_front(Front::kRoom, target, &moved);
    if (!s.ok()) return s;
  }
  if (moved) delete_files_below_floor();
  return Status::Ok();
}

Status RocksStore::reclaim_log(Front how) {
  for (size_t i = 0; i < kMaxSteps; ++i) {
    bool moved = false;
    {
      std::lock_guard append_lock(append_mu_);
      if (garbage_.load() > garbage_high()) reclaiming_ = true;
      if (!reclaiming_ || garbage_.load() <= garbage_low()) {
        reclaiming_ = false;
        break;
      }
      Status s = move_front(how, 0, &moved);
      if (!s.ok()) return s;
    }
    if (!moved) break;
    delete_files_below_floor();
  }
  return Status::Ok();
}

Status RocksStore::move_front(Front how, uint64_t live_target, bool* moved) {
  std::lock_guard state_lock(state_mu_);
  const uint64_t head = next_seq_;
  const std::string from = log_key(floor_), until = log_key(head);
  rocksdb::Slice ub(until);
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &ub;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, cfs_[kEvents]));
  Iterators its = drop_iterators();
  rocksdb::Iterator* runs_it = its.runs.get();
  // The runs of the traces met, by position.
  std::unordered_map<std::string, std::vector<Run>> runs_of;
  rocksdb::WriteBatch b;
  DropTally dropped;
  uint64_t dropped_traces = 0;
  const uint64_t now = clock_.now_ns();
  uint64_t front = floor_, next = head, read = 0, garbage = 0, moved_n = 0;
  it->Seek(from);
  // Until the step's bound, or until the garbage left is down to the low
  // mark (the live bytes to the target): no more is moved or dropped than
  // that takes.
  auto more = [&] {
    if (how == Front::kRoom) {
      return static_cast<int64_t>(live_.load()) + dropped.live > static_cast<int64_t>(live_target);
    }
    return garbage_.load() + dropped.garbage > garbage + garbage_low();
  };
  while (it->Valid() && read < kStepBytes && more()) {
    LogValue v;
    if (!is_log_key(it->key().ToStringView()) || !parse_log_value(it->value().ToStringView(), &v)) {
      return Status::Corruption("a malformed message in the log");
    }
    const uint64_t pos = get_be64(it->key().ToStringView().substr(1));
    const uint64_t bytes = it->key().size() + it->value().size();
    auto [found, fresh] = runs_of.try_emplace(std::string(v.trace_id));
    if (fresh) {
      Status s = load_runs(found->first, runs_it, &found->second);
      if (!s.ok()) return s;
    }
    auto run = std::find_if(found->second.begin(), found->second.end(),
                            [&](const Run& r) { return pos >= r.pos && pos < r.pos + r.n; });
    if (run == found->second.end()) {
      garbage += bytes;
      read += bytes;
      front = pos + 1;
      it->Next();
      continue;
    }
    if (pos != run->pos) return Status::Corruption("the log's front is inside a run");
    if (how != Front::kReclaim) {
      uint64_t max_seq = 0;
      Status s =
          drop_at_front(found->first, run->seq, found->second, its, now, &b, &dropped, &max_seq);
      if (!s.ok()) return s;
      if (max_seq > 0) {
        // Its runs up to the revision went: the front passes them as garbage.
        std::erase_if(found->second, [&](const Run& r) { return r.seq <= max_seq; });
        ++dropped_traces;
        continue;
      }
      if (how == Front::kRoom) break;  // it stays where it is
    }
    // Still needed: the run moves to the head.
    for (uint32_t i = 0; i < run->n; ++i, it->Next()) {
      if (!it->Valid() || it->key() != log_key(run->pos + i)) {
        if (!it->status().ok()) break;
        return Status::Corruption("a run's message is missing from the log");
      }
      b.Put(cfs_[kEvents], log_key(next + i), it->value());
      read += it->key().size() + it->value().size();
    }
    if (!it->status().ok()) break;
    front = run->pos + run->n;
    run->pos = next;
    next += run->n;
    moved_n += run->n;
    b.Put(cfs_[kTraces], run_key(found->first, run->seq), run_value(*run));
  }
  if (!it->status().ok()) return from_rocks(it->status(), "reading the log's front");
  if (!it->Valid() && it->status().ok()) front = head;  // all of it was read
  // Iterators pin the memtables they read: held over the write, they
  // could keep it waiting for memory that only their release frees.
  it.reset();
  its = Iterators();
  if (front == floor_) return Status::Ok();
  b.Put(cfs_[kTraces], kCounterLogFloor, be64(front));
  if (next != head) b.Put(cfs_[kTraces], kCounterEventNext, be64(next));
  b.Merge(cfs_[kTraces], kCounterGarbage,
          encode_i64(static_cast<int64_t>(dropped.garbage) - static_cast<int64_t>(garbage)));
  if (dropped.live != 0) b.Merge(cfs_[kTraces], kCounterLive, encode_i64(dropped.live));
  // Synced like the messages themselves: the files below the front are
  // deleted next, and the moved messages must not go with them.
  rocksdb::Status rs = write(wo_, &b);
  if (!rs.ok()) return from_rocks(rs, "moving the log's front");
  floor_ = front;
  next_seq_ = next;
  garbage_.fetch_add(dropped.garbage);
  garbage_.fetch_sub(std::min(garbage, garbage_.load()));
  live_.fetch_add(static_cast<uint64_t>(dropped.live));
  moved_.fetch_add(moved_n);
  counters_.dropped_retained_traces.fetch_add(dropped_traces);
  counters_.dropped_retained_events.fetch_add(dropped.events);
  *moved = true;
  return Status::Ok();
}

void RocksStore::delete_files_below_floor() {
  uint64_t floor = 0;
  {
    std::lock_guard lock(append_mu_);
    floor = floor_;
  }
  if (floor == 0) return;
  const std::string begin = log_key(0), end = log_key(floor);
  rocksdb::Slice b(begin), e(end);
  rocksdb::Status s = rocksdb::DeleteFilesInRange(db_.get(), cfs_[kEvents], &b, &e, false);
  if (!s.ok()) spdlog::warn("buffer: deleting the log's files below its front: {}", s.ToString());
}

Status RocksStore::log_bytes(uint64_t pos, uint64_t n, uint64_t* bytes) {
  *bytes = 0;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cfs_[kEvents]));
  uint64_t i = 0;
  for (it->Seek(log_key(pos)); it->Valid() && i < n; it->Next(), ++i) {
    if (it->key() != log_key(pos + i)) return Status::Corruption("a run's message is missing");
    *bytes += it->key().size() + it->value().size();
  }
  return from_rocks(it->status(), "reading the log");
}

}  // namespace sidetrace::buffer::detail

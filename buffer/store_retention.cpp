// Retention: the index of emitted traces whose events nothing refers to any
// more, and the drops of their events (by age, for room, at the log's front).
#include "buffer/detail/rocks_store.h"

#include <algorithm>

namespace sidetrace::buffer::detail {

Status RocksStore::expire(uint64_t emitted_before_ns, uint64_t forget_before_ns,
                          size_t max_traces) {
  StoreLock db_lock(db_mu_);
  if (!db_) return unavailable();
  uint64_t traces = 0, events = 0;
  Status s = drop_retained(emitted_before_ns, max_traces, 0, &traces, &events);
  if (!s.ok()) return s;
  counters_.expired_traces.fetch_add(traces);
  s = reclaim_log(Front::kReclaim);
  if (!s.ok()) return s;
  std::vector<std::string> idx;
  std::lock_guard lock(state_mu_);
  scan_index(kDeletedPrefix, deleted_from_, {}, forget_before_ns, max_traces, &idx, &s);
  if (!s.ok()) return s;
  if (idx.empty()) return Status::Ok();
  // One write for the round.
  rocksdb::WriteBatch b;
  int64_t live = 0;
  uint64_t forgotten = 0;
  for (const std::string& k : idx) {
    std::string trace_id = k.substr(9);
    TraceState st;
    b.Delete(cfs_[kTraces], k);
    s = get_state_nolock(trace_id, &st);
    if (s.ok() && st.events_deleted && st.deleted_ns == get_be64(std::string_view(k).substr(1))) {
      b.Delete(cfs_[kTraces], state_key(trace_id));
      live -= static_cast<int64_t>(1 + trace_id.size() + kStateQuotaBytes);
      ++forgotten;
    } else if (!s.ok() && !s.IsNotFound()) {
      return s;
    }
  }
  if (live != 0) b.Merge(cfs_[kTraces], kCounterLive, encode_i64(live));
  rocksdb::Status rs = write(wo_derived_, &b);
  if (!rs.ok()) return from_rocks(rs, "forgetting trace states");
  live_.fetch_add(static_cast<uint64_t>(live));
  counters_.forgotten_traces.fetch_add(forgotten);
  deleted_from_ = idx.back();
  return Status::Ok();
}

void RocksStore::put_index_key(rocksdb::WriteBatch* b, char prefix, uint64_t ns,
                               std::string_view trace_id) {
  std::string k = index_key(prefix, ns, trace_id);
  b->Put(cfs_[kTraces], k, "");
  if (prefix == kDeletedPrefix) {
    deleted_from_ = std::min(deleted_from_, k);
  } else if (k < retained_from_) {
    if (retained_low_.empty() && retained_behind_.size() < kMaxRetainedBehind) {
      retained_behind_.insert(std::move(k));
      return;
    }
    if (!retained_behind_.empty()) k = std::min(k, *retained_behind_.begin());
    retained_behind_.clear();
    if (retained_low_.empty() || k < retained_low_) retained_low_ = std::move(k);
  }
}

bool RocksStore::scan_index(char prefix, const std::string& from, const std::string& until,
                            uint64_t before_ns, size_t limit, std::vector<std::string>* out,
                            Status* status) {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cfs_[kTraces]));
  bool reached = true;
  for (it->Seek(from); it->Valid(); it->Next()) {
    rocksdb::Slice k = it->key();
    if (k.empty() || k[0] != prefix || k.size() < 10) break;
    if (!until.empty() && k.compare(until) >= 0) break;
    if (index_time(k.ToStringView()) >= before_ns || out->size() >= limit) {
      reached = false;
      break;
    }
    out->push_back(k.ToString());
  }
  *status = from_rocks(it->status(), "scanning the retention index");
  return reached && status->ok();
}

Status RocksStore::drop_retained(uint64_t before_ns, size_t limit, uint64_t target,
                                 uint64_t* traces, uint64_t* events, size_t* keys) {
  std::lock_guard lock(state_mu_);
  // First the keys behind retained_from_, then from it on.
  std::vector<std::string> idx;
  Status s;
  bool low_done = true;
  if (!retained_low_.empty()) {
    low_done =
        scan_index(kRetainedPrefix, retained_low_, retained_from_, before_ns, limit, &idx, &s);
    if (!s.ok()) return s;
  }
  for (const std::string& k : retained_behind_) {
    if (idx.size() >= limit || index_time(k) >= before_ns) {
      low_done = false;
      break;
    }
    idx.push_back(k);
  }
  const size_t low = idx.size();
  if (low_done) {
    scan_index(kRetainedPrefix, retained_from_, {}, before_ns, limit, &idx, &s);
    if (!s.ok()) return s;
  }
  if (idx.empty()) {
    if (low_done) retained_low_.clear();
    return Status::Ok();
  }
  rocksdb::WriteBatch b;
  DropTally tally;
  // Iterators for the round: each trace's runs (and messages stored
  // before the log) are a seek away.
  Iterators its = drop_iterators();
  const uint64_t now = clock_.now_ns();
  size_t taken = 0;
  while (taken < idx.size()) {
    s = add_events_drop(idx[taken++], its, now, &b, &tally);
    if (!s.ok()) return s;
    if (target > 0 &&
        static_cast<int64_t>(live_.load()) + tally.live <= static_cast<int64_t>(target)) {
      break;
    }
  }
  its = Iterators();  // released before the write (see move_front())
  b.Merge(cfs_[kTraces], kCounterLive, encode_i64(tally.live));
  if (tally.garbage > 0) {
    b.Merge(cfs_[kTraces], kCounterGarbage, encode_i64(static_cast<int64_t>(tally.garbage)));
  }
  rocksdb::Status rs = write(wo_derived_, &b);
  if (!rs.ok()) return from_rocks(rs, "dropping retained events");
  live_.fetch_add(static_cast<uint64_t>(tally.live));
  garbage_.fetch_add(tally.garbage);
  *traces += tally.traces;
  *events += tally.events;
  if (keys) *keys += taken;
  // The scans go on from the last key taken.
  if (!retained_behind_.empty()) {
    retained_behind_.erase(retained_behind_.begin(),
                           std::next(retained_behind_.begin(), std::min(taken, low)));
  } else if (taken < low || (taken == low && !low_done)) {
    retained_low_ = idx[taken - 1];
  } else {
    retained_low_.clear();
  }
  if (taken > low) retained_from_ = idx[taken - 1];
  return Status::Ok();
}

RocksStore::Iterators RocksStore::drop_iterators() {
  Iterators its;
  its.runs.reset(db_->NewIterator(rocksdb::ReadOptions(), cfs_[kTraces]));
  if (legacy_events_) {
    rocksdb::ReadOptions ro;
    ro.prefix_same_as_start = true;
    its.legacy.reset(db_->NewIterator(ro, cfs_[kEvents]));
  }
  return its;
}

Status RocksStore::add_events_drop(const std::string& rkey, Iterators& its, uint64_t now,
                                   rocksdb::WriteBatch* b, DropTally* tally,
                                   const std::vector<Run>* known_runs) {
  std::string trace_id = rkey.substr(9);
  uint64_t emit_ns = index_time(rkey);
  TraceState st;
  Status s = get_state_nolock(trace_id, &st);
  if (!s.ok() && !s.IsNotFound()) return s;
  b->Delete(cfs_[kTraces], rkey);
  if (!s.ok()) return Status::Ok();
  // A trace that outbox entries refer to again only loses the key: the
  // entry's removal puts it back.
  bool refers = false;
  s = pinned(trace_id, st, &refers);
  if (!s.ok() || refers) return s;
  // A key that outlived its emission (two keys of one trace in a round:
  // only the one of its last emission matches) is replaced by the key of
  // the last emission when that one is missing (the entry that pinned the
  // trace went after a later revision).
  if (st.last_emit_ns != emit_ns) {
    if (st.events_deleted) return Status::Ok();
    const std::string last = index_key(kRetainedPrefix, st.last_emit_ns, trace_id);
    std::string unused;
    rocksdb::Status rs = db_->Get(rocksdb::ReadOptions(), cfs_[kTraces], last, &unused);
    if (rs.IsNotFound()) put_index_key(b, kRetainedPrefix, st.last_emit_ns, trace_id);
    return rs.ok() || rs.IsNotFound() ? Status::Ok() : from_rocks(rs, "reading the index");
  }
  if (its.legacy) {
    rocksdb::Iterator* it = its.legacy.get();
    const std::string prefix = event_prefix(trace_id);
    for (it->Seek(event_key(trace_id, 0)); it->Valid(); it->Next()) {
      rocksdb::Slice k = it->key();
      if (!k.starts_with(prefix) || event_key_seq(k.ToStringView()) > st.max_seq) break;
      b->Delete(cfs_[kEvents], k);
      tally->live -= static_cast<int64_t>(k.size() + it->value().size());
      ++tally->events;
    }
    if (!it->status().ok()) return from_rocks(it->status(), "dropping retained events");
  }
  s = add_runs_drop(trace_id, st.max_seq, its.runs.get(), known_runs, b, tally);
  if (!s.ok()) return s;
  st.events_deleted = true;
  st.deleted_ns = now;
  ++st.generation;
  b->Put(cfs_[kTraces], state_key(trace_id), encode_state(st));
  put_index_key(b, kDeletedPrefix, st.deleted_ns, trace_id);
  ++tally->traces;
  return Status::Ok();
}

Status RocksStore::add_runs_drop(const std::string& trace_id, uint64_t max_seq,
                                 rocksdb::Iterator* runs, const std::vector<Run>* known,
                                 rocksdb::WriteBatch* b, DropTally* tally) {
  std::vector<Run> loaded;
  if (!known) {
    Status s = load_runs(trace_id, runs, &loaded);
    if (!s.ok()) return s;
    known = &loaded;
  }
  for (const Run& r : *known) {
    if (r.seq > max_seq) continue;
    const uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(r.n, max_seq - r.seq + 1));
    uint64_t dropped = r.bytes;
    if (n < r.n) {
      // The messages that go are counted one by one; the rest stays a run.
      uint64_t rest = 0;
      Status s = log_bytes(r.pos + n, r.n - n, &rest);
      if (!s.ok()) return s;
      dropped = r.bytes > rest ? r.bytes - rest : 0;
      Run kept{r.seq + n, r.pos + n, r.n - n, clamp32(rest)};
      std::string k = run_key(trace_id, kept.seq), v = run_value(kept);
      b->Put(cfs_[kTraces], k, v);
      tally->live += static_cast<int64_t>(k.size() + kRunValueBytes);
    }
    std::string k = run_key(trace_id, r.seq);
    b->Delete(cfs_[kTraces], k);
    tally->live -= static_cast<int64_t>(dropped + k.size() + kRunValueBytes);
    tally->events += n;
    tally->garbage += dropped;
  }
  return Status::Ok();
}

Status RocksStore::drop_at_front(const std::string& trace_id, uint64_t seq,
                                 const std::vector<Run>& runs, Iterators& its, uint64_t now,
                                 rocksdb::WriteBatch* b, DropTally* tally, uint64_t* max_seq) {
  TraceState st;
  Status s = get_state_nolock(trace_id, &st);
  if (s.IsNotFound()) return Status::Ok();
  if (!s.ok()) return s;
  if (st.revision == 0 || seq > st.max_seq) return Status::Ok();
  bool refers = false;
  s = pinned(trace_id, st, &refers);
  if (!s.ok() || refers) return s;
  for (const Run& r : runs) {
    if (r.seq <= st.max_seq && r.seq + r.n - 1 > st.max_seq) return Status::Ok();
  }
  std::string rkey = index_key(kRetainedPrefix, st.last_emit_ns, trace_id);
  s = add_events_drop(rkey, its, now, b, tally, &runs);
  if (!s.ok()) return s;
  if (!retained_behind_.empty()) retained_behind_.erase(rkey);
  *max_seq = std::max<uint64_t>(st.max_seq, 1);
  return Status::Ok();
}

Status RocksStore::load_runs(const std::string& trace_id, rocksdb::Iterator* runs,
                             std::vector<Run>* out) {
  const std::string prefix = run_prefix(trace_id);
  for (runs->Seek(prefix); runs->Valid() && runs->key().starts_with(prefix); runs->Next()) {
    Run& r = out->emplace_back();
    if (!parse_run(runs->key().ToStringView(), prefix.size(), runs->value().ToStringView(), &r)) {
      return Status::Corruption("a malformed run of trace messages");
    }
  }
  return from_rocks(runs->status(), "reading a trace's runs");
}

}  // namespace sidetrace::buffer::detail

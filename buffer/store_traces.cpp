// TraceStore: pending records, reads of a trace's messages, trace states
// and emissions.
#include "buffer/detail/rocks_store.h"

#include <algorithm>

namespace sidetrace::buffer::detail {

Status RocksStore::read_trace(std::string_view trace_id, const TraceRange& range,
                              std::vector<StoredEvent>* out, bool* more) {
  StoreLock db_lock(db_mu_);
  if (!db_) return unavailable();
  *more = false;
  // The trace's messages within `range`'s bounds; false once one is past
  // them (`more` is then set).
  size_t n = 0, bytes = 0;
  auto take = [&](uint64_t seq, uint64_t recv_ns, std::string_view raw) {
    if (n >= range.max_events || (n > 0 && bytes + raw.size() > range.max_bytes)) {
      *more = true;
      return false;
    }
    out->push_back(StoredEvent{seq, recv_ns, std::string(raw)});
    ++n;
    bytes += raw.size();
    return true;
  };
  // Messages stored before the log have the lower seqs.
  if (legacy_events_) {
    Status s = read_legacy(trace_id, range, take);
    if (!s.ok() || *more) return s;
  }
  // The trace's runs and the log, from one view of the store.
  std::vector<rocksdb::Iterator*> its;
  rocksdb::Status rs =
      db_->NewIterators(rocksdb::ReadOptions(), {cfs_[kTraces], cfs_[kEvents]}, &its);
  if (!rs.ok()) return from_rocks(rs, "reading a trace");
  std::unique_ptr<rocksdb::Iterator> runs(its[0]), log(its[1]);
  const std::string prefix = run_prefix(trace_id);
  const std::string from = run_key(trace_id, range.from_seq);
  // The run that holds from_seq may begin below it.
  if (range.from_seq > 0) runs->SeekForPrev(from);
  if (range.from_seq == 0 || !runs->Valid() || !runs->key().starts_with(prefix)) {
    runs->Seek(from);
  }
  for (; runs->Valid() && runs->key().starts_with(prefix); runs->Next()) {
    Run r;
    if (!parse_run(runs->key().ToStringView(), prefix.size(), runs->value().ToStringView(), &r)) {
      return Status::Corruption("a malformed run of trace messages");
    }
    if (r.seq >= range.until_seq) break;
    if (r.seq + r.n <= range.from_seq) continue;
    uint64_t seq = std::max(r.seq, range.from_seq);
    const uint64_t end = std::min<uint64_t>(r.seq + r.n, range.until_seq);
    log->Seek(log_key(r.pos + (seq - r.seq)));
    for (; seq < end; ++seq, log->Next()) {
      LogValue v;
      if (!log->Valid() || !is_log_key(log->key().ToStringView()) ||
          get_be64(log->key().ToStringView().substr(1)) != r.pos + (seq - r.seq) ||
          !parse_log_value(log->value().ToStringView(), &v) || v.trace_id != trace_id) {
        if (!log->status().ok()) break;
        return Status::Corruption("a trace's run names a message the log does not hold");
      }
      if (!take(seq, v.recv_ns, v.raw)) return Status::Ok();
    }
    if (!log->status().ok()) return from_rocks(log->status(), "reading a trace");
  }
  return from_rocks(runs->status(), "reading a trace");
}

Status RocksStore::read_records(std::string_view trace_id, std::span<const RecordRef> records,
                                size_t max_bytes, std::vector<StoredEvent>* out) {
  StoreLock db_lock(db_mu_);
  if (!db_) return unavailable();
  std::vector<RecordRef> sorted(records.begin(), records.end());
  std::sort(sorted.begin(), sorted.end(),
            [](const RecordRef& a, const RecordRef& b) { return a.seq < b.seq; });
  std::vector<uint64_t> seqs;
  for (const RecordRef& r : sorted) {
    for (uint32_t i = 0; i < r.messages; ++i)
      seqs.push_back(r.seq + i);
  }
  // Point lookups, not iterators: a position's key is in at most one of
  // the log's files (they never overlap), and nothing else is read. A few
  // at a time, so that few blocks are pinned at once.
  constexpr size_t kKeysAtOnce = 64;
  const size_t before = out->size();
  size_t bytes = 0;
  std::vector<std::string> key_bytes;
  key_bytes.reserve(kKeysAtOnce);  // the slices below point into them
  std::vector<rocksdb::Slice> keys;
  std::vector<rocksdb::PinnableSlice> values(std::min(kKeysAtOnce, seqs.size()));
  std::vector<rocksdb::Status> statuses(values.size());
  for (size_t at = 0; at < seqs.size(); at += kKeysAtOnce) {
    const size_t n = std::min(kKeysAtOnce, seqs.size() - at);
    key_bytes.clear();
    keys.clear();
    for (size_t i = 0; i < n; ++i)
      keys.emplace_back(key_bytes.emplace_back(log_key(seqs[at + i])));
    db_->MultiGet(rocksdb::ReadOptions(), cfs_[kEvents], n, keys.data(), values.data(),
                  statuses.data(), /*sorted_input=*/true);
    for (size_t i = 0; i < n; ++i) {
      LogValue v;
      Status failed;
      if (!statuses[i].ok() || !parse_log_value(values[i].ToStringView(), &v) ||
          v.trace_id != trace_id) {
        failed = !statuses[i].ok() && !statuses[i].IsNotFound()
                     ? from_rocks(statuses[i], "reading a trace's records")
                     : Status::NotFound("a record's messages are no longer where they were stored");
      } else if (out->size() > before && bytes + v.raw.size() > max_bytes) {
        failed = Status::Full("a trace's records hold more than max_bytes");
      }
      if (!failed.ok()) {
        out->resize(before);
        return failed;
      }
      out->push_back(StoredEvent{seqs[at + i], v.recv_ns, std::string(v.raw)});
      bytes += v.raw.size();
    }
    for (size_t i = 0; i < n; ++i)
      values[i].Reset();
  }
  return Status::Ok();
}

template <typename Take>
Status RocksStore::read_legacy(std::string_view trace_id, const TraceRange& range, Take& take) {
  std::string prefix = event_prefix(trace_id);
  std::string upper = prefix;
  put_be64(&upper, range.until_seq);
  rocksdb::Slice ub(upper);
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &ub;
  ro.prefix_same_as_start = true;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, cfs_[kEvents]));
  for (it->Seek(event_key(trace_id, range.from_seq)); it->Valid(); it->Next()) {
    rocksdb::Slice k = it->key(), v = it->value();
    if (k.size() != prefix.size() + 8 || v.size() < 8) {
      return Status::Corruption("events entry with a malformed key or value");
    }
    if (!take(event_key_seq(k.ToStringView()), get_be64(v.ToStringView()),
              std::string_view(v.data() + 8, v.size() - 8))) {
      break;
    }
  }
  return from_rocks(it->status(), "reading a trace");
}

Status RocksStore::scan_pending(uint64_t from_seq, size_t limit, std::vector<Committed>* out) {
  StoreLock db_lock(db_mu_);
  if (!db_) return unavailable();
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cfs_[kPending]));
  size_t n = 0;
  for (it->Seek(be64(from_seq)); it->Valid() && n < limit; it->Next(), ++n) {
    rocksdb::Slice k = it->key(), v = it->value();
    uint64_t recv_ns = 0, stored_ns = 0;
    uint32_t messages = 0;
    std::string_view trace_id;
    if (k.size() != 8 ||
        !decode_pending(v.ToStringView(), &recv_ns, &messages, &stored_ns, &trace_id)) {
      return Status::Corruption("malformed pending entry");
    }
    Committed& c = out->emplace_back(
        Committed{std::string(trace_id), get_be64(k.ToStringView()), recv_ns, messages, 0});
    c.stored_ns = stored_ns;
  }
  return from_rocks(it->status(), "scanning pending");
}

Status RocksStore::release_pending(std::string_view trace_id, std::span<const uint64_t> seqs) {
  StoreLock db_lock(db_mu_);
  if (!db_) return unavailable();
  std::lock_guard lock(state_mu_);
  rocksdb::WriteBatch b;
  int64_t live = 0;
  std::string v;
  for (uint64_t seq : seqs) {
    // Only records that exist count: the quota measure stays exact.
    rocksdb::Status rs = db_->Get(rocksdb::ReadOptions(), cfs_[kPending], be64(seq), &v);
    if (rs.IsNotFound()) continue;
    if (!rs.ok()) return from_rocks(rs, "reading a pending record");
    b.Delete(cfs_[kPending], be64(seq));
    live -= static_cast<int64_t>(pending_bytes(trace_id));
  }
  if (b.Count() == 0) return Status::Ok();
  b.Merge(cfs_[kTraces], kCounterLive, encode_i64(live));
  rocksdb::Status rs = write(wo_derived_, &b);
  if (!rs.ok()) return from_rocks(rs, "releasing pending records");
  live_.fetch_add(static_cast<uint64_t>(live));
  return Status::Ok();
}

Status RocksStore::get_state(std::string_view trace_id, TraceState* out) {
  StoreLock db_lock(db_mu_);
  if (!db_) return unavailable();
  const uint64_t created = states_created_.load();
  Status s = get_state_nolock(trace_id, out);
  if (s.IsNotFound()) {
    // Remembered only when no emission wrote a state while it read.
    std::lock_guard lock(absent_mu_);
    if (states_created_.load() == created) {
      if (absent_.size() >= kMaxAbsent) absent_.clear();
      absent_.emplace(trace_id);
    }
  }
  return s;
}

Status RocksStore::get_state_nolock(std::string_view trace_id, TraceState* out) {
  std::string v;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), cfs_[kTraces], state_key(trace_id), &v);
  if (!s.ok()) return from_rocks(s, "reading a trace state");
  if (!decode_state(v, out)) return Status::Corruption("malformed trace state");
  return Status::Ok();
}

Status RocksStore::emit(const Emission& e, uint64_t* outbox_seq) {
  Status result;
  Status s = emit_many({&e, 1}, {&result, 1}, {outbox_seq, 1});
  return s.ok() ? result : s;
}

Status RocksStore::emit_many(std::span<const Emission> es, std::span<Status> results,
                             std::span<uint64_t> outbox_seqs) {
  StoreLock db_lock(db_mu_);
  if (!db_) return unavailable();
  size_t written = 0;
  {
    std::lock_guard lock(state_mu_);
    // One batch reused for every emission write: its buffer is allocated
    // (and its pages faulted in) once, not grown anew in every round.
    rocksdb::WriteBatch& b = emit_batch_;
    b.Clear();
    int64_t live = 0, docs_bytes = 0;
    uint64_t next = next_outbox_;
    // The outbox seqs of the documents put in memory by this write.
    std::vector<uint64_t>& held = emit_held_;
    held.clear();
    for (size_t i = 0; i < es.size(); ++i) {
      // A recipe when the document waits in memory; when memory is full
      // (delivery is behind), the document itself, as a backlog is best
      // read back in emission order.
      const bool by_recipe =
          es[i].document && !es[i].recipe.empty() && hold_document(next, es[i].document);
      results[i] = add_emission_locked(es[i], next, by_recipe, &b, &live);
      if (!results[i].ok()) {
        if (by_recipe) forget_document(next);
        continue;
      }
      if (by_recipe) held.push_back(next);
      outbox_seqs[i] = next++;
      docs_bytes += static_cast<int64_t>(es[i].document->size());
      ++written;
    }
    if (written == 0) return Status::Ok();
    b.Put(cfs_[kTraces], kCounterOutboxNext, be64(next));
    b.Merge(cfs_[kTraces], kCounterLive, encode_i64(live));
    b.Merge(cfs_[kTraces], kCounterOutboxN, encode_i64(static_cast<int64_t>(written)));
    b.Merge(cfs_[kTraces], kCounterOutboxB, encode_i64(docs_bytes));
    rocksdb::Status rs = write(wo_derived_, &b);
    {
      // After the write, whatever its outcome: a read that began before it
      // may have missed the states it created.
      std::lock_guard absent_lock(absent_mu_);
      states_created_.fetch_add(1);
    }
    // A rare large write (a part of a split trace) does not stay allocated.
    if (b.GetDataSize() > kEmitBatchKeepBytes) b = rocksdb::WriteBatch();
    if (!rs.ok()) {
      for (uint64_t seq : held)
        forget_document(seq);
      return from_rocks(rs, "emitting trace revisions");
    }
    next_outbox_ = next;
    live_.fetch_add(static_cast<uint64_t>(live));
    outbox_n_.fetch_add(written);
    outbox_b_.fetch_add(static_cast<uint64_t>(docs_bytes));
  }
  std::lock_guard lock(listener_mu_);
  if (listener_) listener_();
  return Status::Ok();
}

Status RocksStore::add_emission_locked(const Emission& e, uint64_t outbox_seq, bool by_recipe,
                                       rocksdb::WriteBatch* b, int64_t* live) {
  if (e.trace_id.empty() || e.trace_id.size() > kMaxTraceIdBytes) {
    return Status::InvalidArgument("emit: bad trace_id");
  }
  if (!e.document) return Status::InvalidArgument("emit: no document");
  TraceState cur;
  bool known_absent = false;
  {
    std::lock_guard absent_lock(absent_mu_);
    known_absent = absent_.erase(e.trace_id) > 0;
  }
  // Most emissions are of a trace the emitter has just found without a
  // state: no second lookup (each probes the filters of every file of the
  // traces family).
  Status s = known_absent ? Status::NotFound() : get_state_nolock(e.trace_id, &cur);
  bool existed = s.ok();
  if (!s.ok() && !s.IsNotFound()) return s;
  if (cur.generation != e.expected_generation) {
    return Status::Busy("trace state changed while its revision was built");
  }
  // Only a revision of a trace emitted before reads the outbox here: for
  // the first of its recipe entries still waiting.
  uint64_t waiting = 0;
  if (existed) {
    s = first_waiting(e.trace_id, cur, &waiting);
    if (!s.ok()) return s;
  }
  const bool pinned = waiting != 0 || cur.undelivered != 0;
  TraceState next = e.state;
  next.generation = cur.generation + 1;
  next.deleted_ns = cur.deleted_ns;
  next.undelivered = cur.undelivered;
  next.pin_first = waiting != 0 ? waiting : (by_recipe ? outbox_seq : 0);
  next.pin_last = by_recipe ? outbox_seq : (waiting != 0 ? cur.pin_last : 0);
  if (cur.events_deleted) next.events_deleted = true;
  std::string obk = be64(outbox_seq);
  std::string head = outbox_head(next.revision, e.emitted_ns, e.trace_id);
  // Head and body in parts: the body is copied once, into the batch.
  rocksdb::Slice key_part(obk);
  if (!by_recipe) {
    rocksdb::Slice value_parts[2] = {rocksdb::Slice(head), rocksdb::Slice(*e.document)};
    b->Put(cfs_[kOutbox], rocksdb::SliceParts(&key_part, 1), rocksdb::SliceParts(value_parts, 2));
    *live += static_cast<int64_t>(obk.size() + head.size() + e.document->size());
  } else {
    std::string mark = outbox_recipe_head(e.document->size());
    rocksdb::Slice value_parts[3] = {rocksdb::Slice(head), rocksdb::Slice(mark),
                                     rocksdb::Slice(e.recipe)};
    b->Put(cfs_[kOutbox], rocksdb::SliceParts(&key_part, 1), rocksdb::SliceParts(value_parts, 3));
    *live += static_cast<int64_t>(obk.size() + head.size() + mark.size() + e.recipe.size());
  }
  // The retention index holds the traces whose events nothing refers to
  // any more: retention and the quota take only those. A pinned trace gets
  // its key when the entry that pins it goes (commit_outbox_removal()).
  if (existed && !pinned) {
    std::string k = index_key(kRetainedPrefix, cur.last_emit_ns, e.trace_id);
    b->Delete(cfs_[kTraces], k);
    if (!retained_behind_.empty()) retained_behind_.erase(k);
  }
  if (existed && cur.events_deleted) {
    b->Delete(cfs_[kTraces], index_key(kDeletedPrefix, cur.deleted_ns, e.trace_id));
  }
  b->Put(cfs_[kTraces], state_key(e.trace_id), encode_state(next));
  if (next.undelivered == 0 && next.pin_last == 0) {
    put_index_key(b, kRetainedPrefix, next.last_emit_ns, e.trace_id);
  }
  if (!existed) *live += static_cast<int64_t>(1 + e.trace_id.size() + kStateQuotaBytes);
  for (uint64_t seq : e.pending_seqs) {
    b->Delete(cfs_[kPending], be64(seq));
    *live -= static_cast<int64_t>(pending_bytes(e.trace_id));
  }
  return Status::Ok();
}

}  // namespace sidetrace::buffer::detail

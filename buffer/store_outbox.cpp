// Outbox: reads, acknowledgements and the documents held in memory; what
// an outbox entry pins of its trace; drops of the oldest entries for room.
#include "buffer/detail/rocks_store.h"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace sidetrace::buffer::detail {

Status RocksStore::read_outbox(uint64_t from_seq, size_t max_entries, size_t max_bytes,
                               std::vector<OutboxEntry>* out) {
  // Entries of `out` (from `first`) whose documents are to be built, and
  // their recipes.
  const size_t first = out->size();
  std::vector<std::pair<size_t, std::string>> to_build;
  {
    StoreLock db_lock(db_mu_);
    if (!db_) return unavailable();
    // What the entries read are, for their removal (read_entries_): only
    // when nothing was removed while the iterator's view was taken.
    uint64_t removals = removals_.load();
    std::vector<std::pair<uint64_t, ReadEntry>> seen;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cfs_[kOutbox]));
    size_t n = 0, bytes = 0;
    for (it->Seek(be64(from_seq)); it->Valid() && n < max_entries; it->Next()) {
      OutboxValue v;
      if (it->key().size() != 8 || !parse_outbox(it->value().ToStringView(), &v)) {
        return Status::Corruption("outbox entry with a malformed key or value");
      }
      if (n > 0 && bytes + v.document_bytes > max_bytes) break;
      bytes += v.document_bytes;
      OutboxEntry& e = out->emplace_back();
      e.seq = get_be64(it->key().ToStringView());
      seen.emplace_back(e.seq,
                        ReadEntry{std::string(v.by_recipe ? v.trace_id : ""), it->value().size(),
                                  v.document_bytes, v.emitted_ns, v.by_recipe, v.counted});
      e.trace_id.assign(v.trace_id);
      e.revision = v.revision;
      e.emitted_ns = v.emitted_ns;
      if (!v.by_recipe) {
        e.document = make_document(std::string(v.document));
      } else if (!take_document(e.seq, &e.document)) {
        to_build.emplace_back(out->size() - 1, std::string(v.recipe));
      }
      ++n;
    }
    if (!it->status().ok()) {
      out->resize(first);
      return from_rocks(it->status(), "reading the outbox");
    }
    remember_read(removals, seen);
  }
  if (to_build.empty()) return Status::Ok();
  DocumentBuilder build;
  {
    std::lock_guard lock(listener_mu_);
    build = builder_;
  }
  for (auto& [i, recipe] : to_build) {
    OutboxEntry& e = (*out)[i];
    Status s = build ? Status::Ok() : Status::IOError("no document builder is set");
    std::string text;
    if (s.ok()) {
      try {
        s = build(e.trace_id, e.revision, recipe, &text);
      } catch (const std::exception& ex) {
        // Delivery sets an entry it cannot encode aside, with the reason.
        spdlog::error("buffer: building outbox document {} ({}) failed: {}", e.seq, e.trace_id,
                      ex.what());
        text.clear();
      }
    }
    if (!s.ok()) {
      out->resize(first);
      return s;
    }
    e.document = make_document(std::move(text));
    documents_rebuilt_.fetch_add(1);
  }
  return Status::Ok();
}

bool RocksStore::take_document(uint64_t seq, Document* document) {
  std::lock_guard lock(docs_mu_);
  auto it = docs_.find(seq);
  if (it == docs_.end()) return false;
  docs_bytes_.fetch_sub(it->second->size());
  *document = std::move(it->second);
  docs_.erase(it);
  return true;
}

void RocksStore::forget_document(uint64_t seq) {
  Document unused;
  take_document(seq, &unused);
}

Status RocksStore::ack_outbox(std::span<const uint64_t> seqs) {
  StoreLock db_lock(db_mu_);
  if (!db_) return unavailable();
  std::lock_guard lock(outbox_mu_);
  std::vector<uint64_t> sorted(seqs.begin(), seqs.end());
  std::sort(sorted.begin(), sorted.end());
  sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
  rocksdb::WriteBatch b;
  Removal r;
  // Entries read since the last removal are known without reading them
  // again (a backlog's documents would be read and decompressed twice).
  // The rest: one sorted MultiGet with pinned values, as neighbours share
  // data blocks.
  std::vector<uint64_t> unknown;
  for (uint64_t seq : sorted) {
    auto known = read_entries_.find(seq);
    if (known == read_entries_.end()) {
      unknown.push_back(seq);
      continue;
    }
    std::string key = be64(seq);
    b.Delete(cfs_[kOutbox], key);
    r.add(seq, key.size(), known->second);
  }
  std::vector<std::string> key_bytes;
  key_bytes.reserve(unknown.size());
  std::vector<rocksdb::Slice> keys;
  keys.reserve(unknown.size());
  for (uint64_t seq : unknown) {
    key_bytes.push_back(be64(seq));
    keys.emplace_back(key_bytes.back());
  }
  std::vector<rocksdb::PinnableSlice> values(keys.size());
  std::vector<rocksdb::Status> statuses(keys.size());
  if (!keys.empty()) {
    db_->MultiGet(rocksdb::ReadOptions(), cfs_[kOutbox], keys.size(), keys.data(), values.data(),
                  statuses.data(), /*sorted_input=*/true);
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    if (statuses[i].IsNotFound()) continue;
    if (!statuses[i].ok()) return from_rocks(statuses[i], "acknowledging outbox entries");
    b.Delete(cfs_[kOutbox], keys[i]);
    r.add(unknown[i], keys[i].size(), values[i].ToStringView());
  }
  if (r.n == 0) return Status::Ok();
  return commit_outbox_removal(b, r, "acknowledging outbox entries");
}

void RocksStore::remember_read(uint64_t removals,
                               std::vector<std::pair<uint64_t, ReadEntry>>& seen) {
  std::lock_guard lock(outbox_mu_);
  if (removals_.load() != removals) return;
  if (read_entries_.size() + seen.size() > kMaxReadEntries) read_entries_.clear();
  for (auto& [seq, entry] : seen)
    read_entries_.insert_or_assign(seq, std::move(entry));
}

void RocksStore::set_outbox_listener(std::function<void()> fn) {
  std::lock_guard lock(listener_mu_);
  listener_ = std::move(fn);
}

void RocksStore::set_document_builder(DocumentBuilder fn) {
  std::lock_guard lock(listener_mu_);
  builder_ = std::move(fn);
}

Status RocksStore::first_waiting(std::string_view trace_id, const TraceState& st, uint64_t* seq) {
  *seq = 0;
  if (st.pin_last == 0 || st.pin_last < outbox_front_.load()) return Status::Ok();
  if (st.pin_first == st.pin_last) {
    rocksdb::PinnableSlice v;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), cfs_[kOutbox], be64(st.pin_last), &v);
    if (s.IsNotFound()) return Status::Ok();
    if (!s.ok()) return from_rocks(s, "reading an outbox entry");
    *seq = st.pin_last;
    return Status::Ok();
  }
  const std::string upper = be64(st.pin_last + 1);
  rocksdb::Slice ub(upper);
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &ub;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, cfs_[kOutbox]));
  for (it->Seek(be64(st.pin_first)); it->Valid(); it->Next()) {
    OutboxValue v;
    if (it->key().size() == 8 && parse_outbox(it->value().ToStringView(), &v) &&
        v.trace_id == trace_id) {
      *seq = get_be64(it->key().ToStringView());
      break;
    }
  }
  return from_rocks(it->status(), "reading the outbox");
}

Status RocksStore::seek_outbox_front(uint64_t if_empty) {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cfs_[kOutbox]));
  it->Seek(be64(outbox_front_.load()));
  if (!it->status().ok()) return from_rocks(it->status(), "reading the outbox");
  const uint64_t front =
      it->Valid() && it->key().size() == 8 ? get_be64(it->key().ToStringView()) : if_empty;
  outbox_front_.store(std::max(front, outbox_front_.load()));
  removed_ahead_.erase(removed_ahead_.begin(), removed_ahead_.lower_bound(outbox_front_.load()));
  front_lost_ = false;
  return Status::Ok();
}

void RocksStore::note_removed(std::span<const uint64_t> seqs) {
  uint64_t front = outbox_front_.load();
  bool front_removed = false;
  for (uint64_t seq : seqs) {
    if (seq < front) continue;
    max_removed_ = std::max(max_removed_, seq);
    if (seq != front) {
      removed_ahead_.insert(seq);
      continue;
    }
    front_removed = true;
    ++front;
    while (!removed_ahead_.empty() && *removed_ahead_.begin() == front) {
      removed_ahead_.erase(removed_ahead_.begin());
      ++front;
    }
  }
  outbox_front_.store(front);
  // An entry that stays while the ones after it go (a batch retried) keeps
  // the front: past a bound of removals ahead of it, or once it goes after
  // they were forgotten, the front is found by a seek, which steps over the
  // entries removed since, once. When the outbox is found empty, no entry is
  // below the next one after the last removed.
  if (removed_ahead_.size() > kMaxRemovedAhead || (front_lost_ && front_removed)) {
    Status s = seek_outbox_front(max_removed_ + 1);
    if (!s.ok()) spdlog::warn("buffer: finding the outbox's first entry: {}", s.ToString());
    if (removed_ahead_.size() > kMaxRemovedAhead) {
      removed_ahead_.clear();
      front_lost_ = true;
    }
  }
}

Status RocksStore::pinned(std::string_view trace_id, const TraceState& st, bool* pinned) {
  *pinned = st.undelivered != 0;
  if (*pinned) return Status::Ok();
  uint64_t seq = 0;
  Status s = first_waiting(trace_id, st, &seq);
  *pinned = seq != 0;
  return s;
}

bool RocksStore::hold_document(uint64_t seq, const Document& document) {
  std::lock_guard lock(docs_mu_);
  if (docs_bytes_.load() + document->size() > opts_.document_cache_bytes) return false;
  docs_.emplace(seq, document);
  docs_bytes_.fetch_add(document->size());
  return true;
}

Status RocksStore::drop_oldest_outbox(size_t limit, uint64_t enough, uint64_t* dropped) {
  std::lock_guard lock(outbox_mu_);
  rocksdb::WriteBatch b;
  Removal r;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cfs_[kOutbox]));
  // Everything below drop_from_ went before: no seeking over its deletions.
  for (it->Seek(be64(drop_from_)); it->Valid() && r.n < limit && r.live < enough; it->Next()) {
    if (it->key().size() != 8) continue;
    b.Delete(cfs_[kOutbox], it->key());
    r.add(get_be64(it->key().ToStringView()), it->key().size(), it->value().ToStringView());
    // A recipe entry frees little by itself: the events it referred to go
    // next, as retained events, before anything more is dropped.
    if (r.has_recipes()) break;
  }
  if (!it->status().ok()) return from_rocks(it->status(), "dropping outbox entries");
  it.reset();  // released before the write (see move_front())
  if (r.n == 0) return Status::Ok();
  Status s = commit_outbox_removal(b, r, "dropping outbox entries");
  if (!s.ok()) return s;
  *dropped = r.n;
  drop_from_ = r.seqs.back() + 1;
  return s;
}

Status RocksStore::commit_outbox_removal(rocksdb::WriteBatch& b, const Removal& r,
                                         std::string_view what) {
  std::unique_lock<std::mutex> state_lock;
  if (r.has_recipes()) state_lock = std::unique_lock(state_mu_);
  for (const auto& [emitted_ns, trace_id] : r.unpinned)
    put_index_key(&b, kRetainedPrefix, emitted_ns, trace_id);
  for (const auto& [trace_id, n] : r.counted) {
    TraceState st;
    Status s = get_state_nolock(trace_id, &st);
    if (s.IsNotFound()) continue;
    if (!s.ok()) return s;
    st.undelivered = st.undelivered > n ? st.undelivered - n : 0;
    b.Put(cfs_[kTraces], state_key(trace_id), encode_state(st));
    bool refers = false;
    s = pinned(trace_id, st, &refers);
    if (!s.ok()) return s;
    if (!refers) {
      put_index_key(&b, kRetainedPrefix, st.last_emit_ns, trace_id);
    }
  }
  b.Merge(cfs_[kTraces], kCounterLive, encode_i64(-static_cast<int64_t>(r.live)));
  b.Merge(cfs_[kTraces], kCounterOutboxN, encode_i64(-static_cast<int64_t>(r.n)));
  b.Merge(cfs_[kTraces], kCounterOutboxB, encode_i64(-static_cast<int64_t>(r.doc_bytes)));
  rocksdb::Status s = write(wo_derived_, &b);
  if (!s.ok()) return from_rocks(s, what);
  removals_.fetch_add(1);
  note_removed(r.seqs);
  live_.fetch_sub(r.live);
  outbox_n_.fetch_sub(r.n);
  outbox_b_.fetch_sub(r.doc_bytes);
  for (uint64_t seq : r.seqs) {
    forget_document(seq);
    read_entries_.erase(seq);
  }
  return Status::Ok();
}

}  // namespace sidetrace::buffer::detail

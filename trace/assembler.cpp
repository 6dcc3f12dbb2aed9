#include "trace/assembler.h"

#include <fmt/format.h>

#include <algorithm>

#include "common/big_endian.h"
#include "common/thread.h"
#include "trace/reconstruct.h"

namespace sidetrace::trace {

namespace {

uint64_t ns(std::chrono::nanoseconds d) {
  return static_cast<uint64_t>(d.count());
}

uint64_t minus(uint64_t now, uint64_t d) {
  return now > d ? now - d : 0;
}

// An outbox recipe: which of the trace's stored messages a revision was
// built from, and how. [u8 1][be64 from_seq][be64 until_seq]
// [be64 changed_after_seq][be32 part][u8 flags: 1 partial, 2 unfinished]
constexpr char kRecipeVersion = 1;
constexpr size_t kRecipeBytes = 1 + 8 + 8 + 8 + 4 + 1;

std::string encode_recipe(uint64_t from_seq, uint64_t until_seq, const BuildOptions& bo) {
  std::string r;
  r.reserve(kRecipeBytes);
  r.push_back(kRecipeVersion);
  put_be64(&r, from_seq);
  put_be64(&r, until_seq);
  put_be64(&r, bo.changed_after_seq);
  put_be32(&r, bo.part);
  r.push_back(static_cast<char>((bo.partial ? 1 : 0) | (bo.mark_unfinished ? 2 : 0)));
  return r;
}

// The document builder the assembler gives its store: the same revision,
// built again from the same stored messages.
buffer::Status build_from_recipe(buffer::TraceStore& store, std::string_view trace_id,
                                 uint32_t revision, std::string_view recipe,
                                 std::string* document) {
  if (recipe.size() != kRecipeBytes || recipe[0] != kRecipeVersion) {
    // Delivery sets an entry whose document is not JSON aside, with the reason.
    spdlog::error("trace {}: revision {} has an outbox recipe that cannot be read", trace_id,
                  revision);
    document->clear();
    return buffer::Status::Ok();
  }
  buffer::TraceRange range;
  range.from_seq = get_be64(recipe.substr(1));
  range.until_seq = get_be64(recipe.substr(9));
  BuildOptions bo;
  bo.revision = revision;
  bo.changed_after_seq = get_be64(recipe.substr(17));
  bo.part = get_be32(recipe.substr(25));
  bo.partial = (recipe[29] & 1) != 0;
  bo.mark_unfinished = (recipe[29] & 2) != 0;
  std::vector<buffer::StoredEvent> events;
  bool more = false;
  buffer::Status s = store.read_trace(trace_id, range, &events, &more);
  if (!s.ok()) return s;
  std::vector<StoredMessage> msgs;
  msgs.reserve(events.size());
  for (const auto& e : events)
    msgs.push_back(StoredMessage{e.seq, e.recv_ns, e.raw});
  *document = build_trace(trace_id, msgs, bo).document;
  return buffer::Status::Ok();
}

}  // namespace

Assembler::Assembler(buffer::TraceStore& store, buffer::MetaStore& meta, const Clock& clock,
                     AssemblerOptions options)
    : store_(store),
      meta_(meta),
      clock_(clock),
      opts_(options),
      log_(10, std::chrono::seconds(10), clock),
      // The thread works in rounds of one tick: notices end a round early
      // only once a quarter of the queue's bound waits.
      queue_(options.queue_bytes, options.queue_bytes / 4) {
  // The outbox keeps how each revision was built, not its document.
  store_.set_document_builder([&store](std::string_view trace_id, uint32_t revision,
                                       std::string_view recipe, std::string* document) {
    return build_from_recipe(store, trace_id, revision, recipe, document);
  });
}

Assembler::~Assembler() {
  stop();
}

void Assembler::on_committed(std::span<buffer::Committed> committed) {
  if (committed.empty()) return;
  // The queue's bound counts the notices; the bytes they carry count against
  // the cache's bound, from here until their trace is emitted.
  size_t weight = 0;
  uint64_t carried = 0;
  for (auto& c : committed) {
    weight += c.trace_id.size() + sizeof(buffer::Committed);
    if (c.raw.empty()) continue;
    const uint64_t w = cache_weight(c.raw.size());
    if (cache_used_.fetch_add(w) + w > opts_.cache_bytes) {
      cache_used_.fetch_sub(w);
      cache_refused_.fetch_add(1);
      std::string().swap(c.raw);
      continue;
    }
    carried += w;
  }
  Notice notice{
      clock_.now_ns(),
      {std::make_move_iterator(committed.begin()), std::make_move_iterator(committed.end())}};
  notifications_.fetch_add(committed.size());
  if (!queue_.try_push(notice, weight)) {
    cache_used_.fetch_sub(carried);
    // The pending column family still holds them: a rescan from the first
    // of them finds them (a commit's seqs are consecutive).
    notifications_dropped_.fetch_add(committed.size());
    uint64_t from = UINT64_MAX;
    for (const auto& c : committed)
      from = std::min(from, c.seq);
    uint64_t cur = resync_from_.load();
    while (from < cur && !resync_from_.compare_exchange_weak(cur, from)) {
    }
  }
}

namespace {
constexpr size_t kMaxQuarantined = 100000;  // read at start; far more than should ever be
// A trace read where its pending records say has at most this many of them.
constexpr size_t kMaxRecordsLookedUp = 16;
}  // namespace

buffer::Status quarantine_list(buffer::MetaStore& store,
                               std::vector<std::pair<std::string, std::string>>* out, size_t limit,
                               std::string_view after) {
  std::vector<std::pair<std::string, std::string>> rows;
  std::string from =
      after.empty() ? std::string() : std::string(kQuarantinePrefix) + std::string(after);
  buffer::Status s = store.meta_scan_after(kQuarantinePrefix, from, limit, &rows);
  for (auto& [key, reason] : rows)
    out->emplace_back(key.substr(kQuarantinePrefix.size()), std::move(reason));
  return s;
}

buffer::Status quarantine_release(buffer::MetaStore& store, std::string_view trace_id) {
  std::string key = std::string(kQuarantinePrefix) + std::string(trace_id);
  std::string reason;
  buffer::Status s = store.meta_get(key, &reason);
  if (!s.ok()) return s;
  return store.meta_delete(key);
}

void Assembler::release(const std::string& trace_id) {
  {
    std::lock_guard lock(release_mu_);
    released_.push_back(trace_id);
    release_pending_.store(true);
  }
  queue_.notify();
}

buffer::Status Assembler::recover() {
  std::vector<std::pair<std::string, std::string>> rows;
  buffer::Status qs = meta_.meta_scan(kQuarantinePrefix, kMaxQuarantined, &rows);
  if (!qs.ok()) return qs;
  for (auto& [key, reason] : rows)
    quarantined_.insert(key.substr(kQuarantinePrefix.size()));
  if (!quarantined_.empty()) {
    spdlog::warn("trace: {} trace(s) set aside earlier are not built (meta {}*)",
                 quarantined_.size(), kQuarantinePrefix);
  }
  need_rescan_ = true;
  next_rescan_ns_ = 0;
  uint64_t now = clock_.now_ns();
  if (!rescan(now, /*at_start=*/true)) {
    return buffer::Status::IOError("rescanning pending failed");
  }
  return buffer::Status::Ok();
}

void Assembler::schedule(const std::string& key, Open& o, uint64_t deadline) {
  o.deadline_ns = deadline;
  if (o.timer_ns != 0 && o.timer_ns <= deadline) return;  // moved when it comes due
  if (o.timer_ns != 0) timers_.erase({o.timer_ns, &key});
  o.timer_ns = deadline;
  timers_.emplace(deadline, &key);
}

void Assembler::drop_cache(Open& o) {
  o.cache_whole = false;
  if (o.cached_bytes > 0) cache_used_.fetch_sub(o.cached_bytes);
  o.cached_bytes = 0;
  std::vector<buffer::StoredEvent>().swap(o.cached);
}

void Assembler::forget(const std::string& trace_id) {
  auto it = open_.find(trace_id);
  if (it != open_.end()) forget(it);
}

void Assembler::forget(OpenMap::iterator it) {
  drop_cache(it->second);
  timers_.erase({it->second.timer_ns, &it->first});
  age_.erase({it->second.first_ns, &it->first});
  open_.erase(it);
  open_n_.store(open_.size());
}

uint64_t Assembler::quiet_deadline(uint64_t first_ns, uint64_t last_ns) const {
  return std::min(last_ns + ns(opts_.quiet_period), first_ns + ns(opts_.max_open));
}

bool Assembler::records_known(const Open& o) const {
  // Every pending record below rescan_from_ is held by an open trace that
  // knows it (notices and rescans add them; a lost notice or a spill moves
  // rescan_from_ down to what it may have held). A trace whose records all
  // lie below it has none unknown among them: one it does not know of is
  // later than all of them, and goes out in a later revision like a late
  // message. Under a sustained overload every trace comes from a rescan
  // that stops for room, and this lets each be read where its records say.
  return o.records_whole || (!need_rescan_ && o.max_seq < rescan_from_);
}

bool Assembler::add_record(Open& o, uint64_t seq, uint32_t messages) {
  for (const buffer::RecordRef& r : o.records) {
    if (r.seq == seq) return false;
  }
  o.records.push_back(buffer::RecordRef{seq, messages});
  return true;
}

void Assembler::take(buffer::Committed& c, uint64_t stored_ns, uint64_t now, bool notified) {
  auto [it, inserted] = open_.try_emplace(c.trace_id);
  Open& o = it->second;
  const std::string& key = it->first;
  if (inserted) {
    o.first_ns = c.recv_ns;
    age_.emplace(o.first_ns, &key);
    // A new trace's messages are all in hand only when none can be in the
    // store unseen: not found by a rescan, and no notices lost or traces
    // spilled since the last rescan (the store may hold earlier ones).
    o.records_whole = notified && !spilled_ && !need_rescan_ && rescan_from_ == UINT64_MAX;
    o.cache_whole = o.records_whole && opts_.cache_bytes > 0;
  } else if (c.recv_ns < o.first_ns) {
    age_.erase({o.first_ns, &key});
    o.first_ns = c.recv_ns;
    age_.emplace(o.first_ns, &key);
  }
  // Quiet time counts from when a message was stored, not from its receive
  // time: messages received together can be stored apart when the store
  // lags, and a trace must not look quiet while part of it still waits to be
  // stored. max_open counts from the first receive time.
  o.last_ns = std::max(o.last_ns, std::min(stored_ns, now));
  o.max_seq = std::max(o.max_seq, c.seq);
  o.min_seq = std::min(o.min_seq, c.seq);
  if (c.record_messages > 0) add_record(o, c.seq, c.record_messages);
  ++o.events;
  o.bytes += c.bytes;
  // Past a per-trace bound it goes out in parts, without waiting to be quiet.
  const bool over = o.events > opts_.max_trace_events || o.bytes > opts_.max_trace_bytes;
  if (!c.raw.empty()) {
    const uint64_t w = cache_weight(c.raw.size());
    if (o.cache_whole && !over) {
      o.cached.push_back(buffer::StoredEvent{c.seq, c.recv_ns, std::move(c.raw)});
      o.cached_bytes += w;
    } else {
      cache_used_.fetch_sub(w);
    }
  }
  // A message without its bytes (refused by the bound, or found by a
  // rescan), or a trace in parts: read from the store from now on.
  if (o.cache_whole && (o.cached.empty() || o.cached.back().seq != c.seq)) drop_cache(o);
  schedule(key, o, over ? std::min(now, quiet_deadline(o)) : quiet_deadline(o));
  if (inserted && open_.size() > opts_.max_open_traces) {
    // Spill the oldest open trace from memory; pending keeps it, and a
    // rescan brings it back when there is room.
    std::string victim = *age_.begin()->second;
    rescan_from_ = std::min(rescan_from_, open_.at(victim).min_seq);
    forget(victim);
    spilled_ = true;
    spilled_n_.fetch_add(1);
  }
  open_n_.store(open_.size());
}

bool Assembler::rescan(uint64_t now, bool at_start) {
  // At start nothing is on its way to the store: a record counts from its
  // receive time. Later, from when its commit was written, as a notice counts
  // from when it came (see take()): others received with its messages may
  // still be on their way, and the store's watermark holds the trace until
  // they are stored. So a backlog that a rescan brings back is due at once,
  // not a quiet period after the rescan. A record stored by a version that
  // did not keep the time counts from now.
  rescans_.fetch_add(1);
  // A full rescan at a restart or after a failed one; after a spill or lost
  // notifications, only from the first entry that may not be held, so that a
  // large backlog is not read again from its start every time.
  uint64_t from = need_rescan_ ? 0 : rescan_from_;
  need_rescan_ = false;
  spilled_ = false;
  window_stop_ = false;
  rescan_from_ = UINT64_MAX;
  next_rescan_ns_ = now + ns(opts_.retry_interval);
  if (from == UINT64_MAX) return true;
  // Traces taken that are due already (quiet since their commit): a window
  // of them at most. Those still in their quiet period count only against
  // the index's bound, as they wait in it either way.
  size_t window = 0;
  const size_t window_bound = std::max<size_t>(opts_.rescan_traces, 1);
  // Once it has read pending to its end, every open trace's records are
  // known: entries before `from` are all held, and the rest were read (a
  // notice lost meanwhile, for a later commit, starts the next rescan).
  std::vector<buffer::Committed> page;
  for (;;) {
    page.clear();
    buffer::Status s = store_.scan_pending(from, 4096, &page);
    if (!s.ok()) {
      store_error(s, "rescanning pending");
      need_rescan_ = true;
      return false;
    }
    rescanned_.fetch_add(page.size());
    bool full = false;
    for (auto& c : page) {
      const uint64_t stored_ns = at_start ? c.recv_ns : (c.stored_ns != 0 ? c.stored_ns : now);
      auto it = open_.find(c.trace_id);
      if (it == open_.end()) {
        if (full) continue;
        if (open_.size() >= opts_.max_open_traces || window >= window_bound) {
          // No room: the rest waits for the next rescan, oldest first. The
          // rest of the page still adds to the traces held, so that few of
          // them are read before their next records (see records_known()).
          full = true;
          spilled_ = true;
          window_stop_ = open_.size() < opts_.max_open_traces;
          rescan_from_ = std::min(rescan_from_, c.seq);
          if (!window_stop_) full_stops_.fetch_add(1);
          continue;
        }
        // As take() schedules a new trace (one past a per-trace bound aside).
        window += quiet_deadline(c.recv_ns, std::min(stored_ns, now)) <= now ? 1 : 0;
        take(c, stored_ns, now, /*notified=*/false);
      } else {
        Open& o = it->second;
        if (add_record(o, c.seq, c.record_messages)) {
          // Messages it did not know of (their notices were lost): not in
          // its cache either.
          drop_cache(o);
          o.last_ns = std::max(o.last_ns, std::min(stored_ns, now));
          schedule(it->first, o, quiet_deadline(o));
        }
        o.min_seq = std::min(o.min_seq, c.seq);
        if (c.recv_ns < o.first_ns) {
          age_.erase({o.first_ns, &it->first});
          o.first_ns = c.recv_ns;
          age_.emplace(o.first_ns, &it->first);
          schedule(it->first, o, std::min(o.deadline_ns, o.first_ns + ns(opts_.max_open)));
        }
        o.max_seq = std::max(o.max_seq, c.seq);
      }
    }
    if (full) return true;
    if (page.size() < 4096) {
      // Read where their records say, not by a walk of their runs: under a
      // sustained overload notices are lost again and again, and every open
      // trace was read the slow way (docs/benchmarks.md, "The twelfth
      // round").
      for (auto& [id, o] : open_)
        o.records_whole = true;
      return true;
    }
    from = page.back().seq + 1;
  }
}

void Assembler::process_guarded(OpenMap::iterator it, uint64_t now, std::vector<Prepared>* out) {
  const std::string& trace_id = it->first;  // valid while the trace is open
  if (!quarantined_.empty() && quarantined_.count(trace_id)) {
    forget(it);  // its messages stay in the store
    return;
  }
  // The failures of a trace tried before are taken out while it is tried
  // again: process() may forget it.
  uint32_t failures = 0;
  if (!build_failures_.empty()) {
    if (auto f = build_failures_.find(trace_id); f != build_failures_.end()) {
      failures = f->second;
      build_failures_.erase(f);
    }
  }
  const size_t before = out->size();
  std::string what;
  try {
    if (opts_.before_build) opts_.before_build(trace_id);
    process(it, now, out);
    return;
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
    what = "an exception that is not a std::exception";
  }
  // Still open: process() forgets a trace only on its way out.
  out->resize(before);
  build_failures_n_.fetch_add(1);
  const uint32_t n = failures + 1;
  if (n >= opts_.max_build_failures) {
    quarantine(it, fmt::format("building failed {} times: {}", n, what));
    return;
  }
  build_failures_[trace_id] = n;
  log_.log(spdlog::level::err, fmt::format("trace {}: building failed (try {} of {}): {}", trace_id,
                                           n, opts_.max_build_failures, what));
  schedule(it->first, it->second, now + ns(opts_.retry_interval));
}

void Assembler::quarantine(OpenMap::iterator it, const std::string& reason) {
  const std::string& trace_id = *quarantined_.insert(it->first).first;
  quarantined_n_.fetch_add(1);
  buffer::Status s = meta_.meta_put(std::string(kQuarantinePrefix) + trace_id, reason);
  if (!s.ok()) store_error(s, "recording a trace set aside");  // set aside until a restart
  spdlog::error("trace {}: set aside, its messages kept in the store: {}", trace_id, reason);
  forget(it);
}

void Assembler::take_released() {
  std::vector<std::string> ids;
  {
    std::lock_guard lock(release_mu_);
    if (!release_pending_.load()) return;
    ids.swap(released_);
    release_pending_.store(false);
  }
  bool any = false;
  for (const auto& id : ids) {
    buffer::Status s = meta_.meta_delete(std::string(kQuarantinePrefix) + id);
    if (!s.ok()) {
      store_error(s, "deleting a trace's quarantine record");
      continue;
    }
    build_failures_.erase(id);
    if (quarantined_.erase(id) > 0) {
      any = true;
      spdlog::info("trace {}: taken back from quarantine; building it again", id);
    }
  }
  // Its messages are pending in the store but known to no open trace: a
  // rescan from the start finds them.
  if (any) resync_from_.store(0);
}

void Assembler::process(OpenMap::iterator it, uint64_t now, std::vector<Prepared>* out) {
  const std::string& trace_id = it->first;
  Open& o = it->second;

  buffer::TraceState st;
  buffer::Status s = store_.get_state(trace_id, &st);
  if (!s.ok() && !s.IsNotFound()) {
    store_error(s, "reading a trace state");
    schedule(it->first, o, now + ns(opts_.retry_interval));
    return;
  }
  if (s.IsNotFound()) st = buffer::TraceState{};
  // The next part of a trace in parts waits while the outbox holds a few
  // parts' worth of documents: delivery takes entries in order, and every
  // other trace's revision would wait behind all of them (a flood into a few
  // traces made traces sent after it wait minutes).
  const bool in_parts =
      st.parts > 0 || o.events > opts_.max_trace_events || o.bytes > opts_.max_trace_bytes;
  if (in_parts && store_.undelivered_bytes() > kPartsAhead * opts_.max_trace_bytes) {
    parts_waited_.fetch_add(1);
    schedule(it->first, o, now + ns(opts_.retry_interval));
    return;
  }
  // Read within the per-trace bounds. A trace that went out in parts goes
  // on in parts, each holding only what was stored after the one before.
  bool parts = st.parts > 0;
  // Never emitted and all in memory: built from the cache. Otherwise read.
  const bool cached = o.cache_whole && st.revision == 0 && !parts &&
                      o.events <= opts_.max_trace_events && o.bytes <= opts_.max_trace_bytes;
  buffer::TraceRange range;
  range.max_events = opts_.max_trace_events;
  range.max_bytes = opts_.max_trace_bytes;
  if (parts) range.from_seq = st.max_seq + 1;
  std::vector<buffer::StoredEvent> events;
  bool more = false;
  if (cached) {
    s = buffer::Status::Ok();
    cache_hits_.fetch_add(1);
  } else {
    cache_misses_.fetch_add(1);
    s = buffer::Status::NotFound();
    size_t messages = 0;
    for (const buffer::RecordRef& r : o.records)
      messages += r.messages;
    // Never emitted, and all its records known: read where they say. Not a
    // trace past a per-trace bound (parts are read by runs), nor one stored
    // a message or two per commit over many (a flood into few traces): one
    // lookup per message costs it more than a walk of its runs.
    if (records_known(o) && st.revision == 0 && !parts && messages <= range.max_events &&
        o.records.size() <= kMaxRecordsLookedUp) {
      s = store_.read_records(trace_id, o.records, range.max_bytes, &events);
      if (s.ok()) record_reads_.fetch_add(1);
    }
    if (s.IsNotFound() || s.IsFull()) s = store_.read_trace(trace_id, range, &events, &more);
  }
  if (s.ok() && more && !parts) {
    // Too large to go out whole: in parts from here on, after what earlier
    // revisions held.
    parts = true;
    if (st.max_seq > 0) {
      events.clear();
      range.from_seq = st.max_seq + 1;
      s = store_.read_trace(trace_id, range, &events, &more);
    }
  }
  // The part holds the messages below `cut`.
  uint64_t cut = UINT64_MAX;
  if (s.ok() && more && !events.empty()) {
    // A part ends where one of the trace's pending records begins: the
    // messages of a record come before the trace's next record, so every
    // record below the cut stands for messages of this part only.
    const uint64_t first = events.front().seq, last = events.back().seq;
    uint64_t next = UINT64_MAX;
    for (const buffer::RecordRef& rec : o.records) {
      const uint64_t r = rec.seq;
      if (r > first && r <= last + 1) cut = cut == UINT64_MAX ? r : std::max(cut, r);
      if (r > last) next = std::min(next, r);
    }
    if (cut != UINT64_MAX) {
      std::erase_if(events, [&](const buffer::StoredEvent& e) { return e.seq >= cut; });
    } else {
      // One commit holds more than a part's bound: the part takes the rest
      // of it, up to the trace's next record.
      buffer::TraceRange rest;
      rest.from_seq = last + 1;
      rest.until_seq = next;
      bool unused = false;
      s = store_.read_trace(trace_id, rest, &events, &unused);
      cut = next;
      more = next != UINT64_MAX;
    }
  }
  if (!s.ok()) {
    store_error(s, "reading a trace");
    schedule(it->first, o, now + ns(opts_.retry_interval));
    return;
  }
  const std::vector<buffer::StoredEvent>& read = cached ? o.cached : events;
  std::vector<StoredMessage> msgs;
  msgs.reserve(read.size());
  uint64_t max_seq = st.max_seq;
  bool fresh = false;
  for (const auto& e : read) {
    msgs.push_back(StoredMessage{e.seq, e.recv_ns, e.raw});
    fresh = fresh || e.seq > st.max_seq;
    max_seq = std::max(max_seq, e.seq);
  }
  // A record above the emitted max_seq stands for messages this revision
  // folds (its messages were committed with it, so they were read above). A
  // record at or below it was learnt of after its messages were emitted (a
  // rescan, a late notification): it may still exist, and is released.
  std::vector<uint64_t> folded, stale;
  for (const buffer::RecordRef& r : o.records) {
    if (r.seq <= st.max_seq) {
      stale.push_back(r.seq);
    } else if (r.seq < cut) {
      folded.push_back(r.seq);
    }
  }
  if (!stale.empty()) {
    s = store_.release_pending(trace_id, stale);
    if (!s.ok()) {
      store_error(s, "releasing pending records");
      schedule(it->first, o, now + ns(opts_.retry_interval));
      return;
    }
    std::erase_if(o.records, [&](const buffer::RecordRef& r) { return r.seq <= st.max_seq; });
  }
  if (!fresh) {
    // Everything notified was already folded into an emitted revision.
    forget(it);
    return;
  }
  bool emitted_before = st.revision > 0;
  bool max_open_reached = now >= o.first_ns + ns(opts_.max_open);
  BuildOptions bo;
  bo.revision = st.revision + 1;
  bo.partial = st.events_deleted && !parts;
  if (parts && !more && now < quiet_deadline(o) && !max_open_reached) {
    // The last of a split trace so far: it waits to be quiet like any trace
    // (it was looked at early because it passed a bound).
    schedule(it->first, o, quiet_deadline(o));
    return;
  }
  if (parts) bo.part = st.parts + 1;
  // What the previous revision held is what was stored up to its max_seq:
  // the messages above it are this revision's changes. A part holds only its
  // own messages, all new.
  if (!parts) bo.changed_after_seq = st.max_seq;
  BuildResult r = build_trace(trace_id, msgs, bo);
  // A part goes out as it is: its events may begin or end in another part.
  if (!r.complete && !parts) {
    if (!emitted_before && !max_open_reached) {
      // It may wait long: its bytes leave the cache to traces that finish.
      drop_cache(o);
      schedule(it->first, o, o.first_ns + ns(opts_.max_open));
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
  if (parts) e.state.parts = st.parts + 1;
  e.pending_seqs = std::move(folded);
  e.document = buffer::make_document(std::move(r.document));
  // The messages it was built from: those read, below the cut of a part.
  e.recipe = encode_recipe(range.from_seq, cut != UINT64_MAX ? cut : max_seq + 1, bo);
  out->push_back(Prepared{std::move(e), bo.mark_unfinished, more, it});
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
    buffer::Emission& e = es[i];
    const auto it = (*batch)[i].open;
    buffer::Status s = written.ok() ? results[i] : written;
    if (s.code() == buffer::Status::Code::kBusy) {
      // The state changed under us (retention or quota): build again next round.
      schedule(it->first, it->second, now);
      continue;
    }
    if (!s.ok()) {
      store_error(s, "emitting a trace revision");
      schedule(it->first, it->second, now + ns(opts_.retry_interval));
      continue;
    }
    ++emitted;
    emitted_.fetch_add(1);
    const uint32_t revision = e.state.revision;
    if (opts_.on_emitted) opts_.on_emitted(e.trace_id, revision, std::move(e.document));
    if ((*batch)[i].unfinished) emitted_unfinished_.fetch_add(1);
    if (e.state.events_deleted) emitted_partial_.fetch_add(1);
    if (e.state.parts > 0) emitted_parts_.fetch_add(1);
    if (revision > 1) late_.fetch_add(1);
    if ((*batch)[i].more) {
      // More of it is stored: its next part is built in the next round.
      Open& o = it->second;
      std::erase_if(o.records,
                    [&](const buffer::RecordRef& r) { return r.seq <= e.state.max_seq; });
      o.events = 0;
      o.bytes = 0;
      schedule(it->first, o, now);
      continue;
    }
    forget(it);
  }
  batch->clear();
  return emitted;
}

size_t Assembler::poll() {
  uint64_t now = clock_.now_ns();
  // Read before the notifications are taken: the notices of everything under
  // the watermark are then in hand.
  const uint64_t due_by = opts_.store_watermark ? std::min(now, opts_.store_watermark(now)) : now;
  queue_.pop_all(inbox_, std::chrono::milliseconds(0));
  for (auto& notice : inbox_) {
    for (auto& c : notice.committed)
      take(c, notice.stored_ns, now, /*notified=*/true);
  }
  inbox_.clear();
  take_released();
  const uint64_t lost_from = resync_from_.exchange(UINT64_MAX);
  if (lost_from != UINT64_MAX) {
    // Lost notices may have held messages of any open trace.
    for (auto& [id, o] : open_) {
      drop_cache(o);
      o.records_whole = false;
    }
    rescan_from_ = std::min(rescan_from_, lost_from);
  }
  // After lost notices at once, before the due traces are built: until it
  // has run, every open trace is read the slow way. It reads pending from the
  // first lost one only, a round's worth under a sustained overload.
  if ((need_rescan_ || spilled_ || rescan_from_ != UINT64_MAX) &&
      (lost_from != UINT64_MAX || now >= next_rescan_ns_ || next_window_due())) {
    rescan(now, /*at_start=*/false);
  }

  // Due traces are taken in deadline order, then trace id order. A backlog
  // that a rescan brings back is due from when each commit was written, so
  // it goes in the log's order, and reading its messages back goes forward
  // through the log's blocks (docs/benchmarks.md, "The nineteenth round").
  // The traces of one commit, and those of records written without the time
  // (all due from the rescan), go in trace id order: their states are looked
  // up in key order.
  // They are held by their place in open_, which nothing below adds to: a
  // trace is forgotten only once it was looked at (process(), emit()).
  std::vector<OpenMap::iterator> due;
  std::vector<OpenMap::iterator> later;  // entries whose deadline moved on
  for (auto t = timers_.begin(); t != timers_.end() && t->first <= due_by; ++t) {
    const auto it = open_.find(*t->second);
    (it->second.deadline_ns > due_by ? later : due).push_back(it);
  }
  for (const auto it : later) {
    Open& o = it->second;
    timers_.erase({o.timer_ns, &it->first});
    o.timer_ns = o.deadline_ns;
    timers_.emplace(o.timer_ns, &it->first);
  }
  // Revisions are written in groups: one store write for many traces.
  size_t emitted = 0;
  std::vector<Prepared> batch;
  size_t batch_bytes = 0;  // a write holds about one part's bound of documents
  for (const auto it : due) {
    const size_t before = batch.size();
    process_guarded(it, now, &batch);
    if (batch.size() > before) batch_bytes += batch.back().emission.document->size();
    if (batch.size() >= opts_.emit_batch || batch_bytes >= opts_.max_trace_bytes) {
      emitted += emit(&batch, now);
      batch_bytes = 0;
    }
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
  thread_ = std::thread([this] { run_thread("st-assembler", [this] { loop(); }); });
}

void Assembler::loop() {
  // Receiving and persisting come first while the CPU is short; assembly
  // catches up when the load eases (the open-trace index stays bounded: it
  // spills to the store).
  lower_thread_priority(opts_.nice);
  while (!stop_.load()) {
    // With traces open, a round every tick (sooner when many notices wait);
    // with none, nothing is due before the next notice or the next retention
    // pass.
    const uint64_t now = clock_.now_ns();
    if (next_window_due()) {
      // The next window of a backlog is waiting in pending: no pause.
    } else if (idle()) {
      const uint64_t until_retention = next_retention_ns_ > now ? next_retention_ns_ - now : 0;
      queue_.wait_for_weight(0, std::chrono::nanoseconds(std::min<uint64_t>(
                                    until_retention, ns(opts_.retention_interval))));
    } else {
      queue_.wait_for_weight(queue_.wake_weight(), opts_.tick);
    }
    poll();
  }
}

bool Assembler::idle() const {
  return open_.empty() && !need_rescan_ && !spilled_ && rescan_from_ == UINT64_MAX &&
         resync_from_.load() == UINT64_MAX && !release_pending_.load();
}

void Assembler::stop() {
  stop_.store(true);
  queue_.notify();
  if (thread_.joinable()) thread_.join();
}

AssemblerStats Assembler::stats() const {
  AssemblerStats s;
  s.notifications = notifications_.load();
  s.notifications_dropped = notifications_dropped_.load();
  s.rescans = rescans_.load();
  s.rescanned_records = rescanned_.load();
  s.spilled = spilled_n_.load();
  s.rescans_full = full_stops_.load();
  s.open_traces = open_n_.load();
  s.emitted = emitted_.load();
  s.emitted_unfinished = emitted_unfinished_.load();
  s.emitted_partial = emitted_partial_.load();
  s.emitted_parts = emitted_parts_.load();
  s.parts_waited = parts_waited_.load();
  s.late_revisions = late_.load();
  s.store_errors = store_errors_.load();
  s.build_failures = build_failures_n_.load();
  s.quarantined = quarantined_n_.load();
  s.cache_hits = cache_hits_.load();
  // Before the misses it is a part of, which grow first.
  s.record_reads = record_reads_.load();
  s.cache_misses = cache_misses_.load();
  s.cache_refused = cache_refused_.load();
  s.cache_bytes = cache_used_.load();
  return s;
}

void Assembler::store_error(const buffer::Status& s, const char* what) {
  store_errors_.fetch_add(1);
  log_.log(spdlog::level::err, fmt::format("trace: {} failed: {}", what, s.ToString()));
}

}  // namespace sidetrace::trace

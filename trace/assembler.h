// The trace assembler: decides when a trace is finished and emits it, as a
// new revision, into the store's outbox.
//
// It learns about committed messages from the writer (on_committed(), fed by
// buffer::Writer's sink) and keeps a bounded in-memory index of open traces:
// first and last activity, the highest seq seen, and a deadline, in a timer
// order. The durable `pending` column family is the truth; the index is only
// a cache of it, rebuilt by recover() at start and by a rescan whenever
// notifications were lost (queue overflow) or entries were spilled (index
// full).
//
// Rules, with the injected Clock (wall-clock readings, ns):
//   - a trace quiet for `quiet_period` (counted from when its last message was
//     stored, not received: a lagging store must not split a trace) is read
//     from the store (or from the event cache, below) and built with
//     trace::build_trace(); it is emitted when complete, or at once when it was
//     emitted before (a late message: revision + 1 of the whole trace, whose
//     events and feedback are marked "changed" when they hold a message stored
//     after the revision before, i.e. above its TraceState::max_seq);
//   - otherwise it waits for more messages, or until `max_open` after its
//     first message, then is emitted with unfinished events marked;
//   - emitting = one atomic store write (buffer::TraceStore::emit): outbox entry,
//     trace state, retention index, deletion of the folded pending records
//     (a record learnt of after its messages were emitted is released on its
//     own). The outbox entry holds a recipe (the seq range of the messages
//     the revision was built from, and the build options), not the document:
//     the document waits in the store's memory for delivery, and the
//     assembler gives the store the builder (set_document_builder()) that
//     builds it again, from the same messages, when it is not there;
//   - a trace's events are kept `retain` after its last emission, then
//     deleted (the small state record stays `forget_after` more); a late
//     message for such a trace yields a revision with what is known, marked
//     partial.
//
// Event cache: the writer hands each committed message's bytes over with its
// notice, and an open trace keeps them while they are the whole of what the
// store holds of it (never emitted, every message notified with its bytes,
// within the per-trace bounds). Such a trace is built from memory, without
// reading its messages back; any other is read from the store, which stays
// the truth: a trace found by a rescan (restart, lost notices, spill), a late
// message, a trace in parts, or one whose bytes did not fit `cache_bytes`.
// Lost notices drop every cached trace to the store path.
//
// Reads from the store: a never-emitted trace whose pending records (a few)
// are all known (every one notified, or found by a rescan that went to the
// end of pending), or whose known records all lie below the first record a
// rescan has still to read (one that stopped with the index full), is read
// where its records say its messages were stored (Store::read_records), one
// point lookup per message; otherwise, or when the log's front has moved them
// since, through its runs (read_trace). A record of the latter kind found
// only later goes out in the next revision, as a late message does.
//
// Driving: poll() does one round of work (take notifications, emit due
// traces, retention) and never sleeps; tests call it with a ManualClock.
// start() runs poll() on an owned thread, waking on notifications or every
// `tick`.
//
// Thread safety: on_committed() and stats() may be called from any thread;
// recover()/poll() from one thread at a time, and not while start()ed.
// Errors: store errors are counted, logged (rate limited) and retried on a
// later round; nothing is lost, since pending stays until an emission commits.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "buffer/meta_store.h"
#include "buffer/trace_store.h"
#include "common/bounded_queue.h"
#include "common/clock.h"
#include "common/rate_limited_log.h"
#include "config/defaults.h"

namespace sidetrace::trace {

struct AssemblerOptions {
  std::chrono::milliseconds quiet_period{config::defaults::kTraceQuietPeriodMs};
  std::chrono::seconds max_open{config::defaults::kTraceMaxOpenS};
  std::chrono::seconds retain{config::defaults::kTraceRetainS};
  // How long the state record (last revision) of a trace whose events were
  // deleted is kept, so that a very late message still gets revision + 1.
  std::chrono::seconds forget_after{7 * 86400};
  // Bound of the in-memory index (trace.max_open_traces).
  size_t max_open_traces = config::defaults::kTraceMaxOpenTraces;
  // Traces due at once that a rescan takes into the index at most (about 330
  // bytes each): a backlog found in pending goes through the index a window
  // at a time, not max_open_traces of it at once. A round emits the due
  // traces it holds; the next window is read without a pause once the index
  // holds fewer than this.
  size_t rescan_traces = 16384;
  // A trace whose unemitted messages pass either bound goes out in parts
  // (trace.max_events, trace.max_bytes): each part a revision of at most
  // about that much, built from only its own messages, so that neither the
  // assembler nor delivery ever holds a whole large trace.
  size_t max_trace_events = config::defaults::kTraceMaxEvents;
  size_t max_trace_bytes = config::defaults::kTraceMaxBytes;
  // Bound of the notification queue (bytes; the message bytes a notice
  // carries count against cache_bytes instead); overflow = drop + rescan.
  // About 17,000 messages: a quarter of a second of a sustained load. An
  // assembler further behind than that works from pending (a rescan) instead.
  size_t queue_bytes = 2 << 20;
  // A failed emission or a rescan need is retried this often.
  std::chrono::milliseconds retry_interval{1000};
  // Retention runs at most this often, deleting at most `expire_batch` traces.
  std::chrono::milliseconds retention_interval{10000};
  size_t expire_batch = 1000;
  // Revisions written together in one store write, at most.
  size_t emit_batch = 256;
  // Bound of the event cache: message bytes handed over by the writer and
  // held until their trace is emitted (counted with a per-message overhead).
  // A message past it is not held, and its trace is read from the store.
  // About 5,000 messages of 800 bytes: at 2,000 msg/s, twice what waits out
  // a one-second quiet period. 0: no cache.
  size_t cache_bytes = 4 << 20;
  std::chrono::milliseconds tick{100};  // the owned thread's longest sleep
  // How many nice levels below the agent's other threads the owned thread
  // runs (common/thread.h): under CPU contention, intake and the writer get
  // the larger share.
  int nice = 5;
  // Called after each successful emission, on the thread that runs poll(),
  // with the emitted revision's document (the text the outbox holds, shared:
  // the assembler keeps no reference). It must be quick and must not call
  // back into the assembler; empty: not called.
  std::function<void(const std::string& trace_id, uint32_t revision, buffer::Document document)>
      on_emitted;
  // A trace whose build throws is tried again after `retry_interval`, and
  // after this many failures in a row it is set aside (quarantined): the
  // reason is stored (meta key "assembler/quarantine/<trace id>"), its
  // messages stay in the store, and it is not built again, also after a
  // restart.
  uint32_t max_build_failures = 3;
  // Called before each build with the trace id (a fault-injection point for
  // tests); empty: not called.
  std::function<void(const std::string& trace_id)> before_build;
  // The store's watermark (buffer::Writer::watermark_ns): what was received
  // before it has been stored and notified. A trace whose quiet deadline is
  // past the watermark waits: part of it may still be on its way (a store
  // lagging by more than the quiet period would otherwise split it into
  // revisions). Called on the assembler's thread; empty: `now`.
  std::function<uint64_t(uint64_t now)> store_watermark;
};

struct AssemblerStats {
  uint64_t notifications = 0;          // committed messages received
  uint64_t notifications_dropped = 0;  // queue overflow (triggers a rescan)
  uint64_t rescans = 0;
  uint64_t rescanned_records = 0;   // pending records read by rescans
  uint64_t spilled = 0;             // open traces dropped from memory (index full)
  uint64_t rescans_full = 0;        // rescans that stopped with the index full
  uint64_t open_traces = 0;         // in the index now
  uint64_t emitted = 0;             // revisions emitted
  uint64_t emitted_unfinished = 0;  // ... of which at max_open with open events
  uint64_t emitted_partial = 0;     // ... of which missing retention-deleted events
  uint64_t emitted_parts = 0;       // ... of which parts of a split trace
  uint64_t late_revisions = 0;      // ... of which revision > 1
  uint64_t parts_waited = 0;        // times a part waited for the outbox (kPartsAhead)
  uint64_t store_errors = 0;
  uint64_t build_failures = 0;  // builds that threw
  uint64_t quarantined = 0;     // traces set aside after max_build_failures
  uint64_t cache_hits = 0;      // revisions built from the event cache
  uint64_t cache_misses = 0;    // revisions built from messages read from the store
  uint64_t record_reads = 0;    // ... of which read where their pending records say
  uint64_t cache_refused = 0;   // messages whose bytes did not fit cache_bytes
  uint64_t cache_bytes = 0;     // held by the cache now (and on their way to it)
};

// Where an assembler records the traces it set aside: meta key
// "assembler/quarantine/<trace id>", its value the reason.
inline constexpr std::string_view kQuarantinePrefix = "assembler/quarantine/";

// The traces set aside by an assembler (meta "assembler/quarantine/<id>"),
// for the CLI and the admin endpoint. `list` gives up to `limit` (trace id,
// reason) pairs in trace id order, from the one after `after`.
buffer::Status quarantine_list(buffer::MetaStore& store,
                               std::vector<std::pair<std::string, std::string>>* out, size_t limit,
                               std::string_view after = {});
// Deletes a trace's quarantine record in a store that no assembler runs on:
// the next start builds the trace again. NotFound when it is not set aside.
buffer::Status quarantine_release(buffer::MetaStore& store, std::string_view trace_id);

class Assembler {
 public:
  // The next part of a trace in parts waits while the outbox holds more than
  // this many parts' bound (max_trace_bytes) of documents: entries go out in
  // order, and other traces' revisions are not to queue behind all of them.
  static constexpr uint64_t kPartsAhead = 4;

  // Borrows `store`, `meta` (where traces set aside are recorded) and
  // `clock`; they must outlive the assembler.
  Assembler(buffer::TraceStore& store, buffer::MetaStore& meta, const Clock& clock,
            AssemblerOptions options = {});
  ~Assembler();  // stops

  Assembler(const Assembler&) = delete;
  Assembler& operator=(const Assembler&) = delete;

  // Called by the writer after each commit. Never blocks: on overflow the
  // notifications are dropped (counted) and a rescan of pending is scheduled.
  // Takes the messages' bytes (Committed::raw, moved out) into the event
  // cache while they fit its bound.
  void on_committed(std::span<buffer::Committed> committed);

  // Rebuilds the index from the store's pending entries. Call once before
  // poll()/start() after opening the store.
  buffer::Status recover();

  // One round of work; returns the number of revisions emitted.
  size_t poll();

  // Takes a trace that was set aside (see max_build_failures) back: at the
  // next round its quarantine record is deleted and its stored messages are
  // found again (a rescan of pending), so that it is built as if it had just
  // arrived. Thread-safe; does not wait for the round.
  void release(const std::string& trace_id);

  void start();
  void stop();

  AssemblerStats stats() const;

 private:
  struct Open {
    uint64_t first_ns = 0;          // earliest receive time of its unemitted messages
    uint64_t last_ns = 0;           // when the last of its messages was stored
    uint64_t max_seq = 0;           // highest seq notified
    uint64_t min_seq = UINT64_MAX;  // lowest seq notified (where a rescan must start to find it)
    uint64_t deadline_ns = 0;       // next look at it
    uint64_t timer_ns = 0;          // its entry in timers_, at or before deadline_ns
    std::vector<buffer::RecordRef> records;  // its pending records known here
    // `records` are all it has pending in the store: known from its first
    // message on, with no notice lost since (see take() and rescan()).
    bool records_whole = false;
    uint64_t events = 0;  // messages notified since its last revision
    uint64_t bytes = 0;   // ... and their raw bytes
    // The event cache: its messages as committed, in seq order, while
    // `cache_whole` holds (they are all the store has of the trace).
    std::vector<buffer::StoredEvent> cached;
    uint64_t cached_bytes = 0;  // their weight against cache_bytes
    bool cache_whole = false;
  };
  using OpenMap = std::unordered_map<std::string, Open>;

  // `stored_ns`: when the message was stored (see rescan() for one it found).
  // `notified`: from a notice (its bytes, if any, are moved to the cache);
  // false from a rescan.
  void take(buffer::Committed& c, uint64_t stored_ns, uint64_t now, bool notified);
  // The weight of a message's bytes against cache_bytes.
  static uint64_t cache_weight(size_t raw_bytes) { return raw_bytes + sizeof(buffer::StoredEvent); }
  // Empties `o`'s cache; from here on it is read from the store.
  void drop_cache(Open& o);
  // When `o` is next looked at: quiet, or at max_open.
  uint64_t quiet_deadline(const Open& o) const { return quiet_deadline(o.first_ns, o.last_ns); }
  // ... of a trace first received at `first_ns` and last stored at `last_ns`.
  uint64_t quiet_deadline(uint64_t first_ns, uint64_t last_ns) const;
  // Whether `o`'s records are all it has pending below its last known one,
  // so that it may be read where they say.
  bool records_known(const Open& o) const;
  // Adds a pending record to `o`; false when it was known.
  static bool add_record(Open& o, uint64_t seq, uint32_t messages);
  // `key` is the trace's key in open_.
  void schedule(const std::string& key, Open& o, uint64_t deadline);
  void forget(const std::string& trace_id);
  void forget(OpenMap::iterator it);
  bool rescan(uint64_t now, bool at_start);
  // A revision built and waiting to be written with others.
  struct Prepared {
    buffer::Emission emission;
    bool unfinished = false;
    bool more = false;       // a part, with more of the trace stored after it
    OpenMap::iterator open;  // the trace in open_, until emit() settles it
  };
  // Looks at a due trace (`it`, in open_); appends its next revision to
  // `out` when there is one to emit. It may forget the trace, but never
  // before it throws.
  void process(OpenMap::iterator it, uint64_t now, std::vector<Prepared>* out);
  // process(), with what it throws caught: the trace is retried, and set
  // aside after max_build_failures.
  void process_guarded(OpenMap::iterator it, uint64_t now, std::vector<Prepared>* out);
  // Sets the trace aside and forgets it (its failure count is process_guarded()'s).
  void quarantine(OpenMap::iterator it, const std::string& reason);
  // Applies release(): deletes the records, and rescans pending.
  void take_released();
  // The owned thread's rounds, until stop().
  void loop();
  // Writes the prepared revisions in one store write and settles each trace;
  // returns the number emitted.
  size_t emit(std::vector<Prepared>* batch, uint64_t now);
  // Nothing open and nothing to rescan: the thread may sleep until a notice.
  bool idle() const;
  // The last rescan stopped at its window, and the index has gone below it
  // since (the round after emits a window): the next rescan is due now.
  bool next_window_due() const { return window_stop_ && open_.size() < opts_.rescan_traces; }
  void store_error(const buffer::Status& s, const char* what);

  buffer::TraceStore& store_;
  buffer::MetaStore& meta_;
  const Clock& clock_;
  const AssemblerOptions opts_;
  RateLimitedLog log_;

  // One commit's notifications and when they were stored.
  struct Notice {
    uint64_t stored_ns = 0;
    std::vector<buffer::Committed> committed;
  };
  BoundedQueue<Notice> queue_;
  // The lowest seq of a dropped notification (UINT64_MAX: none): a rescan
  // from there finds what the dropped ones stood for.
  std::atomic<uint64_t> resync_from_{UINT64_MAX};
  // Traces to take back from quarantine (release()), for the next round.
  std::mutex release_mu_;
  std::vector<std::string> released_;
  std::atomic<bool> release_pending_{false};  // released_ is not empty

  // Owned by the polling thread.
  OpenMap open_;
  // (time, trace id) in time order, then id order. The id points at the key of
  // its open_ entry (stable while the entry exists): an open trace costs one
  // copy of its id, not three. Ids are ordered by their first eight bytes
  // (held in the entry) before their text is read: the traces a rescan finds
  // share one deadline, and each comparison of two ids' text was a walk to
  // both strings' bytes.
  struct Entry {
    Entry(uint64_t time, const std::string* id) : first(time), prefix(id_prefix(*id)), second(id) {}
    uint64_t first;
    uint64_t prefix;
    const std::string* second;
  };
  // The id's first eight bytes (zeros after a shorter one), in the order of
  // the ids' text.
  static uint64_t id_prefix(const std::string& id) {
    uint64_t p = 0;
    for (size_t i = 0; i < 8; ++i)
      p = (p << 8) | (i < id.size() ? static_cast<unsigned char>(id[i]) : 0u);
    return p;
  }
  struct EntryLess {
    bool operator()(const Entry& a, const Entry& b) const {
      if (a.first != b.first) return a.first < b.first;
      if (a.prefix != b.prefix) return a.prefix < b.prefix;
      return *a.second < *b.second;
    }
  };
  // (time, trace_id): one entry per open trace, at or before its deadline. A
  // deadline that moves later (each message of a trace) keeps the entry,
  // which moves once it comes due, instead of on every message.
  std::set<Entry, EntryLess> timers_;
  std::set<Entry, EntryLess> age_;  // (first_ns, trace_id)
  bool spilled_ = false;
  // Where the next rescan after a spill or dropped notifications starts: the
  // lowest pending seq that may belong to a trace not in memory. Entries
  // before it are all held.
  uint64_t rescan_from_ = UINT64_MAX;
  bool need_rescan_ = false;
  // The last rescan stopped at its window (rescan_traces), not at the
  // index's bound (see next_window_due()).
  bool window_stop_ = false;
  uint64_t next_rescan_ns_ = 0;
  uint64_t next_retention_ns_ = 0;
  std::vector<Notice> inbox_;
  std::unordered_map<std::string, uint32_t> build_failures_;  // failures in a row, by trace
  std::set<std::string> quarantined_;                         // set aside, not built again

  std::thread thread_;
  std::atomic<bool> stop_{false};

  std::atomic<uint64_t> notifications_{0}, notifications_dropped_{0}, rescans_{0}, rescanned_{0},
      spilled_n_{0}, open_n_{0}, emitted_{0}, emitted_unfinished_{0}, emitted_partial_{0},
      emitted_parts_{0}, parts_waited_{0}, late_{0}, store_errors_{0}, cache_hits_{0},
      cache_misses_{0}, record_reads_{0}, cache_refused_{0}, build_failures_n_{0},
      quarantined_n_{0}, full_stops_{0};
  // Bytes held by the cache, and in notices on their way to it.
  std::atomic<uint64_t> cache_used_{0};
};

}  // namespace sidetrace::trace

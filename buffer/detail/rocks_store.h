// The store's implementation over RocksDB (buffer/store.h). One class, its
// code in a file per contract:
//   store.cpp            opening, the counters, reopening after a failed write
//   store_log.cpp        EventLog: group commits, the quota, the log's front
//   store_traces.cpp     TraceStore: pending records, reads, states, emissions
//   store_retention.cpp  retention: the index of emitted traces, and drops
//   store_outbox.cpp     Outbox: reads, acknowledgements, documents in memory,
//                        what an entry pins of its trace
//   store_meta.cpp       MetaStore
// Internal to buffer/.
#pragma once

#include <rocksdb/db.h>
#include <rocksdb/iterator.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "buffer/detail/codec.h"
#include "buffer/reclaim.h"
#include "buffer/store.h"
#include "common/clock.h"

namespace sidetrace::buffer::detail {

enum Cf : size_t { kEvents = 0, kPending, kTraces, kOutbox, kMeta, kCfCount };

// RocksDB's status as the store's, with `what` in its message.
Status from_rocks(const rocksdb::Status& s, std::string_view what);

// Opens RocksDB under `o.data_dir`/store with every column family, creating
// what is missing.
Status open_db(const StoreOptions& o, std::unique_ptr<rocksdb::DB>* out,
               std::vector<rocksdb::ColumnFamilyHandle*>* handles_out);

// Operations share the store; only a reopen takes it alone. Under
// ThreadSanitizer every operation takes it alone: Debian's RocksDB is not
// built for TSan, and its own ordering between threads (write groups handing
// batches and the WAL buffer to a leader, the memtable's lock-free skip list)
// is invisible to it, so concurrent calls would be reported as races in
// RocksDB's memory. Serialised, what TSan reports is about this code.
#if defined(__SANITIZE_THREAD__)
using StoreLock = std::unique_lock<std::shared_mutex>;
#else
using StoreLock = std::shared_lock<std::shared_mutex>;
#endif

class RocksStore final : public Store {
 public:
  // `o.env` is `env` when one is given; the store keeps both for reopening.
  RocksStore(const StoreOptions& o, std::shared_ptr<ReclaimingFileSystem> reclaim,
             std::unique_ptr<rocksdb::Env> env, std::unique_ptr<rocksdb::DB> db,
             std::vector<rocksdb::ColumnFamilyHandle*> cfs);

  ~RocksStore() override { close_db(); }  // db_ is null after a failed reopen

  Status load_counters();

  // ---- Store (store.cpp) ----

  Status compact() override;
  StoreCounters counters() const override;

  // ---- EventLog (store_log.cpp) ----

  Status append(std::span<const ipc::Message> msgs, std::vector<Committed>* out) override;
  Status ensure_room(uint64_t bytes) override;
  bool needs_resume() const override { return write_failed_.load(); }
  Status resume() override;  // in store.cpp

  // ---- TraceStore (store_traces.cpp) ----

  using Store::read_trace;
  Status read_trace(std::string_view trace_id, const TraceRange& range,
                    std::vector<StoredEvent>* out, bool* more) override;
  Status read_records(std::string_view trace_id, std::span<const RecordRef> records,
                      size_t max_bytes, std::vector<StoredEvent>* out) override;
  Status scan_pending(uint64_t from_seq, size_t limit, std::vector<Committed>* out) override;
  Status release_pending(std::string_view trace_id, std::span<const uint64_t> seqs) override;
  Status get_state(std::string_view trace_id, TraceState* out) override;
  Status emit(const Emission& e, uint64_t* outbox_seq) override;
  Status emit_many(std::span<const Emission> es, std::span<Status> results,
                   std::span<uint64_t> outbox_seqs) override;
  uint64_t undelivered_bytes() const override { return outbox_b_.load(); }
  void set_document_builder(DocumentBuilder fn) override;  // in store_outbox.cpp
  Status expire(uint64_t emitted_before_ns, uint64_t forget_before_ns,
                size_t max_traces) override;  // in store_retention.cpp

  // ---- Outbox (store_outbox.cpp) ----

  Status read_outbox(uint64_t from_seq, size_t max_entries, size_t max_bytes,
                     std::vector<OutboxEntry>* out) override;
  Status ack_outbox(std::span<const uint64_t> seqs) override;
  uint64_t outbox_entries() const override { return outbox_n_.load(); }
  uint64_t outbox_bytes() const override { return outbox_b_.load(); }
  void set_outbox_listener(std::function<void()> fn) override;

  // ---- MetaStore (store_meta.cpp) ----

  Status meta_put(std::string_view key, std::string_view value) override;
  Status meta_get(std::string_view key, std::string* value) override;
  Status meta_delete(std::string_view key) override;
  Status meta_scan(std::string_view prefix, size_t limit,
                   std::vector<std::pair<std::string, std::string>>* out) override;
  Status meta_scan_after(std::string_view prefix, std::string_view after, size_t limit,
                         std::vector<std::pair<std::string, std::string>>* out) override;
  Status meta_write(const MetaWrite& w) override;

 private:
  // ---- store.cpp ----

  static Status unavailable() {
    return Status::IOError("the store is closed after a write failure; waiting to reopen it");
  }

  // Every write goes through here: a failed one leaves RocksDB in its
  // background-error state, which only resume() clears, whichever thread
  // (writer, assembler, delivery) made the write.
  rocksdb::Status write(const rocksdb::WriteOptions& wo, rocksdb::WriteBatch* b);

  // Requires db_mu_ held exclusively (or no other user).
  void close_db();

  Status get_u64(const std::string& key, uint64_t* v, bool big_endian);

  Status resume_db();

  // ---- store_outbox.cpp ----

  // Moves the document of recipe entry `seq` out of memory; false when it
  // is not there.
  bool take_document(uint64_t seq, Document* document);

  void forget_document(uint64_t seq);

  // What an entry read by read_outbox() is, for its removal.
  struct ReadEntry {
    std::string trace_id;  // for a recipe entry (its trace's retention)
    size_t value_bytes = 0, document_bytes = 0;
    uint64_t emitted_ns = 0;
    bool by_recipe = false, counted = false;  // OutboxValue's
  };

  // Keeps what read_outbox() saw of `seen`, unless an entry was removed
  // since `removals` was read (its view may hold entries no longer there).
  void remember_read(uint64_t removals, std::vector<std::pair<uint64_t, ReadEntry>>& seen);

  // Keeps `document` in memory as outbox entry `seq`'s (shared with the
  // emitter, not copied); false when it does not fit
  // opts_.document_cache_bytes.
  bool hold_document(uint64_t seq, const Document& document);

  // The seq of the first entry of `trace_id` the outbox still holds between
  // the state's pin_first and pin_last (0: none). One lookup for a trace
  // with one recipe entry; the entries between them otherwise.
  Status first_waiting(std::string_view trace_id, const TraceState& st, uint64_t* seq);

  // Requires outbox_mu_ (or no other user of the store). Moves
  // outbox_front_ up to the outbox's first entry, or to `if_empty` when it
  // holds none at or above the front.
  Status seek_outbox_front(uint64_t if_empty);

  // Requires outbox_mu_. Moves outbox_front_ past the removed entries `seqs`.
  void note_removed(std::span<const uint64_t> seqs);

  // Whether an outbox entry still refers to the events of `trace_id`, whose
  // state is `st`.
  Status pinned(std::string_view trace_id, const TraceState& st, bool* pinned);

  // Drops up to `limit` of the oldest entries, stopping once `enough` bytes went.
  Status drop_oldest_outbox(size_t limit, uint64_t enough, uint64_t* dropped);

  // Outbox entries on their way out, and what they held.
  struct Removal {
    uint64_t n = 0, doc_bytes = 0, live = 0;
    std::vector<uint64_t> seqs;
    // Recipe entries within their traces' ranges (TraceState::pin_first,
    // pin_last), as (emitted_ns, trace_id): the retention index key each puts.
    std::vector<std::pair<uint64_t, std::string>> unpinned;
    // Recipe entries of earlier versions per trace: the traces' undelivered
    // counts fall by these.
    std::unordered_map<std::string, uint32_t> counted;
    void add(uint64_t seq, size_t key_bytes, std::string_view value) {
      ++n;
      live += key_bytes + value.size();
      seqs.push_back(seq);
      OutboxValue v;
      if (!parse_outbox(value, &v)) return;
      doc_bytes += v.document_bytes;
      add_recipe(v.by_recipe, v.counted, v.emitted_ns, v.trace_id);
    }
    void add(uint64_t seq, size_t key_bytes, const ReadEntry& e) {
      ++n;
      live += key_bytes + e.value_bytes;
      seqs.push_back(seq);
      doc_bytes += e.document_bytes;
      add_recipe(e.by_recipe, e.counted, e.emitted_ns, e.trace_id);
    }
    void add_recipe(bool by_recipe, bool counted_entry, uint64_t emitted_ns,
                    std::string_view trace_id) {
      if (!by_recipe) return;
      if (counted_entry) {
        ++counted[std::string(trace_id)];
      } else {
        unpinned.emplace_back(emitted_ns, trace_id);
      }
    }
    bool has_recipes() const { return !unpinned.empty() || !counted.empty(); }
  };

  // Requires outbox_mu_. Writes the removal `b` (deletes of outbox entries)
  // with the counters: a trace that no entry refers to any more goes (back)
  // into the retention index. An entry that pinned its trace puts the key of
  // its own emission without reading the state: when a later revision moved
  // the trace's last emission, retention finds the key stale and puts the
  // right one (add_events_drop()).
  Status commit_outbox_removal(rocksdb::WriteBatch& b, const Removal& r, std::string_view what);

  // ---- store_retention.cpp ----

  // Where scans of the retention (R) and deletion (D) indexes start, so that
  // they do not step over the deletions of every key taken before (until
  // compaction drops them, each seek would read them all again): whole keys,
  // as the traces of one emission share its time. Guarded by state_mu_:
  // - no D key is below deleted_from_;
  // - no R key is below retained_from_, except traces delivered after newer
  //   ones went (the quota takes outbox entries oldest first, and a backlog
  //   is delivered after the traces emitted since). Those are taken first:
  //   up to kMaxRetainedBehind of them are held in retained_behind_; past
  //   that, they are found by a scan from retained_low_ (empty: none), which
  //   moves up as they go, so that each stretch of the index is stepped over
  //   once.
  static constexpr size_t kMaxRetainedBehind = 4096;
  std::string retained_from_{kRetainedPrefix}, retained_low_, deleted_from_{kDeletedPrefix};
  std::set<std::string> retained_behind_;  // empty while retained_low_ is set

  static uint64_t index_time(std::string_view key) { return get_be64(key.substr(1)); }

  // Requires state_mu_. Adds the index key of `trace_id` at `ns` to `b`.
  void put_index_key(rocksdb::WriteBatch* b, char prefix, uint64_t ns, std::string_view trace_id);

  // Requires state_mu_. Adds to `out` the index keys with the given prefix
  // in [from, until) (until empty: no bound) whose time is < `before_ns`,
  // oldest first, up to `limit` keys in `out`. True when it reached `until`.
  bool scan_index(char prefix, const std::string& from, const std::string& until,
                  uint64_t before_ns, size_t limit, std::vector<std::string>* out, Status* status);

  // Deletes the retained events of the oldest traces in the retention index
  // (emitted before `before_ns`), in one write: at most `limit` traces,
  // stopping once the store's live bytes are down to `target` (0: no such
  // stop). Each trace keeps its state, with events_deleted set. `*keys`
  // (optional) counts the index keys taken, those that dropped nothing too.
  Status drop_retained(uint64_t before_ns, size_t limit, uint64_t target, uint64_t* traces,
                       uint64_t* events, size_t* keys = nullptr);

  // What a round of drops takes: the change of live bytes, the messages
  // dropped, and the bytes of those that stay in the log as garbage.
  struct DropTally {
    int64_t live = 0;
    uint64_t traces = 0, events = 0, garbage = 0;
  };

  struct Iterators {
    std::unique_ptr<rocksdb::Iterator> runs;    // over the traces family
    std::unique_ptr<rocksdb::Iterator> legacy;  // over the events, when stored before the log
  };

  // What add_events_drop() reads with.
  Iterators drop_iterators();

  // Requires state_mu_. Adds to `b` the deletion of the retention index key
  // `rkey` and of the retained events (seq <= max_seq) of the trace it names,
  // found with `its`. The state stays, with events_deleted set; `tally`
  // counts what goes.
  Status add_events_drop(const std::string& rkey, Iterators& its, uint64_t now,
                         rocksdb::WriteBatch* b, DropTally* tally,
                         const std::vector<Run>* known_runs = nullptr);

  // Adds to `b` the deletion of the trace's runs (`known`, or else found with
  // `runs`, an iterator over the traces family) up to seq `max_seq`: a run
  // that goes on past it keeps the rest. Their messages stay in the log as
  // garbage until its front passes them (reclaim_log()).
  Status add_runs_drop(const std::string& trace_id, uint64_t max_seq, rocksdb::Iterator* runs,
                       const std::vector<Run>* known, rocksdb::WriteBatch* b, DropTally* tally);
  // Requires state_mu_. Adds to `b` the drop of the trace's retained
  // messages when its run at the front (`seq`) is among them (the trace is
  // emitted, and no outbox entry refers to it); `max_seq` is then the last of
  // them (0: nothing dropped). A trace whose revision ends within a run (it
  // went out in parts) is left to the other drops.
  Status drop_at_front(const std::string& trace_id, uint64_t seq, const std::vector<Run>& runs,
                       Iterators& its, uint64_t now, rocksdb::WriteBatch* b, DropTally* tally,
                       uint64_t* max_seq);

  // The runs of `trace_id`, read with `runs` (an iterator over the traces
  // family).
  Status load_runs(const std::string& trace_id, rocksdb::Iterator* runs, std::vector<Run>* out);

  // ---- store_traces.cpp ----

  // Requires db_mu_. Reads the messages of `trace_id` in `range` stored
  // before the log into `take`, until it refuses one.
  template <typename Take>
  Status read_legacy(std::string_view trace_id, const TraceRange& range, Take& take);

  Status get_state_nolock(std::string_view trace_id, TraceState* out);

  // Adds one revision's writes to `b` as outbox entry `outbox_seq`. Busy when
  // the trace's state changed since the revision was built.
  Status add_emission_locked(const Emission& e, uint64_t outbox_seq, bool by_recipe,
                             rocksdb::WriteBatch* b, int64_t* live);

  // ---- store_log.cpp ----

  // A trace's messages in one group commit.
  struct AppendRun {
    size_t first = 0;  // the index of its first message
    uint32_t n = 0, taken = 0;
    uint64_t seq = 0;  // the seq of its first message
    size_t bytes = 0;  // of their keys and values in the log
  };

  static uint32_t clamp32(size_t v) {
    return static_cast<uint32_t>(std::min<size_t>(v, UINT32_MAX));
  }

  // ---- the log's front ----
  // Dropped messages stay in the log as garbage, and whole table files are
  // deleted once the front has passed them: nothing is deleted message by
  // message, so the log's files never overlap and compactions only move them
  // down. Past a bound of garbage the front moves on in steps; a message it
  // meets that a run still refers to (a long trace, a pending or undelivered
  // one) is moved to the head first, with the rest of its run.

  // The garbage past which the front moves (an eighth of the quota), and
  // down to which it then moves (a sixteenth).
  uint64_t garbage_high() const { return std::max<uint64_t>(opts_.max_bytes / 8, 1); }
  uint64_t garbage_low() const { return opts_.max_bytes / 16; }
  // The log a step reads at most, and the steps of one call.
  static constexpr uint64_t kStepBytes = 1 << 20;
  static constexpr size_t kMaxSteps = 8;

  // How the front moves.
  enum class Front {
    kReclaim,         // over garbage, moving what is still needed
    kReclaimForRoom,  // ... dropping retained traces rather than moving them
    kRoom,            // over garbage and retained traces (dropped) until the
                      // live bytes are down to a target; stops at anything else
  };

  // Requires db_mu_ (shared). One step of Front::kRoom.
  Status drop_at_log_front(uint64_t target);

  // Requires db_mu_ (shared). Moves the front while the garbage is past its
  // bound (in steps), with `how` kReclaim or kReclaimForRoom.
  Status reclaim_log(Front how);

  // Requires append_mu_. Moves the front over up to kStepBytes of the log,
  // as `how` says (`live_target`: for Front::kRoom); `moved` tells whether
  // it moved. A retained trace met (emitted and delivered) is dropped rather
  // than moved when the quota asks for room, as the quota would drop it soon.
  Status move_front(Front how, uint64_t live_target, bool* moved);
  // Deletes the log's table files that lie wholly below its front.
  void delete_files_below_floor();

  // The bytes (keys and values) of the `n` messages in the log from `pos`.
  Status log_bytes(uint64_t pos, uint64_t n, uint64_t* bytes);
  const StoreOptions opts_;
  const Clock& clock_;
  // The filesystem and Env under the DB: they outlive it (declared first).
  std::shared_ptr<ReclaimingFileSystem> reclaim_;
  std::unique_ptr<rocksdb::Env> env_;
  // Shared by every operation; exclusive only to reopen after a fatal error.
  mutable std::shared_mutex db_mu_;
  std::unique_ptr<rocksdb::DB> db_;  // null while a reopen is failing
  std::vector<rocksdb::ColumnFamilyHandle*> cfs_;
  rocksdb::WriteOptions wo_;
  rocksdb::WriteOptions wo_derived_;

  std::mutex append_mu_;              // serialises append(): seqs become visible in order
  rocksdb::WriteBatch append_batch_;  // guarded by append_mu_
  // The runs and seqs of the commit being built; guarded by append_mu_.
  std::unordered_map<std::string_view, AppendRun> append_runs_;
  std::vector<uint64_t> append_seqs_;
  uint64_t next_seq_ = 1;
  // The events family holds messages stored before the log (set at open).
  bool legacy_events_ = false;
  // The log's front: no run refers to a message below it. Guarded by
  // append_mu_ (written by reclaim_log(), which holds it).
  uint64_t floor_ = 0;
  std::atomic<uint64_t> garbage_{0}, moved_{0};
  bool reclaiming_ = false;  // guarded by append_mu_
  std::mutex state_mu_;      // serialises trace-state read-modify-writes
  // The batch of emit_many(), guarded by state_mu_; kept allocated up to
  // kEmitBatchKeepBytes.
  static constexpr size_t kEmitBatchKeepBytes = 1 << 20;
  rocksdb::WriteBatch emit_batch_;
  std::vector<uint64_t> emit_held_;  // guarded by state_mu_
  // Traces get_state() found without a state, none created for them since;
  // guarded by absent_mu_ (taken after state_mu_ where both are). Only an
  // emission creates a state: it removes its trace here, and counts its
  // writes in states_created_, after them, so that a read that began before
  // one is not remembered. Bounded by kMaxAbsent (past it, cleared).
  std::mutex absent_mu_;
  std::unordered_set<std::string> absent_;
  std::atomic<uint64_t> states_created_{0};
  static constexpr size_t kMaxAbsent = 4096;
  uint64_t next_outbox_ = 1;
  // The outbox holds no entry below it (entries are written at next_outbox_
  // and up, and only removed after): an entry of a trace's state below it is
  // gone without a lookup (first_waiting()). Moved up by each removal
  // (note_removed()), under outbox_mu_, with the entries removed ahead of it
  // (acknowledged out of order) until it reaches them; bounded by
  // kMaxRemovedAhead, past which they are forgotten (front_lost_) and the
  // front found by a seek.
  std::atomic<uint64_t> outbox_front_{0};
  std::set<uint64_t> removed_ahead_;
  uint64_t max_removed_ = 0;
  bool front_lost_ = false;
  static constexpr size_t kMaxRemovedAhead = 4096;
  std::mutex outbox_mu_;    // serialises outbox removals (exact counters)
  uint64_t drop_from_ = 0;  // the outbox entries below it were dropped; guarded by outbox_mu_
  // Entries read and not removed since, by seq; guarded by outbox_mu_. Only
  // ack_outbox() and drop_oldest_outbox() remove entries, and both erase
  // them here, so one found here is still stored.
  // Cleared when a reopen may have lost a write; bounded by kMaxReadEntries
  // (past it, cleared: acknowledgements then read the entries).
  std::unordered_map<uint64_t, ReadEntry> read_entries_;
  static constexpr size_t kMaxReadEntries = 16384;
  // Removals committed; read_outbox() remembers what it read only when none
  // happened while it read.
  std::atomic<uint64_t> removals_{0};
  // Traces (or outbox entries) the quota drops in one write, at most.
  static constexpr size_t kDropRound = 64;
  std::mutex listener_mu_;  // guards listener_ and builder_
  std::function<void()> listener_;
  DocumentBuilder builder_;
  // The documents of recipe entries not read yet, by outbox seq, within
  // opts_.document_cache_bytes.
  std::mutex docs_mu_;
  std::unordered_map<uint64_t, Document> docs_;
  std::atomic<uint64_t> docs_bytes_{0}, documents_rebuilt_{0};

  std::atomic<uint64_t> live_{0}, outbox_n_{0}, outbox_b_{0};
  std::atomic<bool> write_failed_{false};

  struct {
    std::atomic<uint64_t> dropped_retained_traces{0}, dropped_retained_events{0},
        dropped_outbox_entries{0}, expired_traces{0}, forgotten_traces{0};
  } counters_;
};

}  // namespace sidetrace::buffer::detail

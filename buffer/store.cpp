#include "buffer/store.h"

#include <rocksdb/cache.h>
#include <rocksdb/convenience.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/listener.h>
#include <rocksdb/merge_operator.h>
#include <rocksdb/options.h>
#include <rocksdb/slice_transform.h>
#include <rocksdb/sst_file_reader.h>
#include <rocksdb/sst_file_writer.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>
#include <rocksdb/write_buffer_manager.h>
#include <spdlog/spdlog.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <system_error>
#include <unordered_map>
#include <unordered_set>

#include "buffer/crc32c.h"
#include "buffer/detail/codec.h"
#include "buffer/reclaim.h"
#include "common/memory.h"

namespace sidetrace::buffer {

std::string Status::ToString() const {
  const char* name = "OK";
  switch (code_) {
    case Code::kOk:
      return "OK";
    case Code::kNotFound:
      name = "NotFound";
      break;
    case Code::kNoSpace:
      name = "NoSpace";
      break;
    case Code::kFull:
      name = "Full";
      break;
    case Code::kIOError:
      name = "IOError";
      break;
    case Code::kCorruption:
      name = "Corruption";
      break;
    case Code::kBusy:
      name = "Busy";
      break;
    case Code::kInvalidArgument:
      name = "InvalidArgument";
      break;
  }
  return message_.empty() ? std::string(name) : std::string(name) + ": " + message_;
}

namespace {

using namespace detail;

Status from_rocks(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return Status::Ok();
  std::string m = std::string(what) + ": " + s.ToString();
  if (s.IsNotFound()) return Status::NotFound(std::move(m));
  if (s.IsNoSpace()) return Status::NoSpace(std::move(m));
  if (s.IsCorruption()) return Status::Corruption(std::move(m));
  if (s.IsBusy() || s.IsTryAgain() || s.IsTimedOut()) return Status::Busy(std::move(m));
  if (s.IsInvalidArgument() || s.IsNotSupported()) return Status::InvalidArgument(std::move(m));
  if (s.IsIOError()) {
    // RocksDB reports "no space" sometimes only through the errno text.
    if (s.ToString().find("No space left") != std::string::npos) {
      return Status::NoSpace(std::move(m));
    }
    if (s.ToString().find("lock") != std::string::npos) return Status::Busy(std::move(m));
  }
  return Status::IOError(std::move(m));
}

// int64 addition for the store's counters.
class AddOperator final : public rocksdb::AssociativeMergeOperator {
 public:
  bool Merge(const rocksdb::Slice&, const rocksdb::Slice* existing, const rocksdb::Slice& value,
             std::string* out, rocksdb::Logger*) const override {
    int64_t base = existing ? decode_i64(existing->ToStringView()) : 0;
    *out = encode_i64(base + decode_i64(value.ToStringView()));
    return true;
  }
  const char* Name() const override { return "sidetrace.add_i64"; }
};

// The prefix of an events key stored before the log that names its trace:
// [u8 len][trace_id], everything but the 8-byte sequence number. (Every key of
// the log has the same prefix, its first byte.)
class TracePrefix final : public rocksdb::SliceTransform {
 public:
  const char* Name() const override { return "sidetrace.trace_prefix"; }
  rocksdb::Slice Transform(const rocksdb::Slice& key) const override {
    return rocksdb::Slice(key.data(), key.size() - 8);
  }
  bool InDomain(const rocksdb::Slice& key) const override { return key.size() > 8; }
};

// RocksDB's own messages go to the agent's log, never to a LOG file in the
// store: a file logger on the data disk fails with the disk, and RocksDB
// aborts when it writes again to a file that has failed. Routine messages
// (flushes, compactions) are debug; warnings and errors keep their level.
class ForwardingLogger final : public rocksdb::Logger {
 public:
  ForwardingLogger() : rocksdb::Logger(rocksdb::InfoLogLevel::INFO_LEVEL) {}

  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    Logv(rocksdb::InfoLogLevel::INFO_LEVEL, format, ap);
  }
  void Logv(const rocksdb::InfoLogLevel level, const char* format, va_list ap) override {
    spdlog::level::level_enum to = spdlog::level::debug;
    if (level == rocksdb::InfoLogLevel::WARN_LEVEL) {
      to = spdlog::level::warn;
    } else if (level >= rocksdb::InfoLogLevel::ERROR_LEVEL &&
               level < rocksdb::InfoLogLevel::HEADER_LEVEL) {
      to = spdlog::level::err;
    }
    if (!spdlog::should_log(to)) return;
    char buf[1024];
    int n = std::vsnprintf(buf, sizeof buf, format, ap);
    if (n < 0) return;
    size_t len = std::min(static_cast<size_t>(n), sizeof buf - 1);
    while (len > 0 && buf[len - 1] == '\n')
      --len;
    spdlog::log(to, "rocksdb: {}", std::string_view(buf, len));
  }
};

// RocksDB's own recovery from a full disk (it polls for free space, then
// resumes in place) is turned off: it would resume in place too (see
// RocksStore::resume_db()). The writer reopens the store instead.
class NoAutoRecovery final : public rocksdb::EventListener {
 public:
  void OnErrorRecoveryBegin(rocksdb::BackgroundErrorReason, rocksdb::Status,
                            bool* auto_recovery) override {
    *auto_recovery = false;
  }
};

enum Cf : size_t { kEvents = 0, kPending, kTraces, kOutbox, kMeta, kCfCount };
constexpr const char* kCfNames[kCfCount] = {"events", "pending", "traces", "outbox", "meta"};

Status open_db(const StoreOptions& o, std::unique_ptr<rocksdb::DB>* out,
               std::vector<rocksdb::ColumnFamilyHandle*>* handles_out) {
  if (o.data_dir.empty()) return Status::InvalidArgument("data_dir is empty");
  std::error_code ec;
  std::filesystem::create_directories(o.data_dir, ec);
  if (ec) {
    return Status::IOError("cannot create data_dir " + o.data_dir + ": " + ec.message());
  }
  std::string path = (std::filesystem::path(o.data_dir) / "store").string();
  std::filesystem::create_directories(path, ec);
  if (ec) return Status::IOError("cannot create " + path + ": " + ec.message());

  rocksdb::DBOptions db;
  db.create_if_missing = true;
  db.create_missing_column_families = true;
  db.paranoid_checks = true;
  db.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;
  // The writer owns recovery from write errors (a reopen), so RocksDB's own
  // background retries are off.
  db.max_bgerror_resume_count = 0;
  db.max_total_wal_size = o.max_wal_bytes;
  // WAL files are not recycled: RocksDB (7.8) turns recycling off with
  // point-in-time recovery, and with the recovery mode that allows it
  // (skipping any corrupted record) its flush crashed in MarkLogsSynced. So
  // each group commit's fdatasync also commits the growing WAL file's size
  // (docs/benchmarks.md, "The disk's own floor").
  // A hard budget: when the memtables of all column families reach it, the
  // writer waits for a flush instead of growing them (the queue in front of
  // it then applies back-pressure), so memory does not follow the load.
  db.write_buffer_manager = std::make_shared<rocksdb::WriteBufferManager>(
      o.memtable_budget_bytes, /*cache=*/nullptr, /*allow_stall=*/true);
  // One flush and two compactions: the events and outbox column families
  // compact side by side, so that level 0 does not pile up under a sustained
  // load and throttle every write (RocksDB slows all writes when one column
  // family has too many level-0 files).
  db.max_background_jobs = 3;
  db.max_open_files = 512;
  db.keep_log_file_num = 3;
  db.max_log_file_size = 4 << 20;
  db.bytes_per_sync = 1 << 20;
  // Table files are written through a buffer that grows to this (RocksDB's
  // default is 1 MiB) and goes with the file: a flush's MiB was faulted in
  // page by page whenever the allocator had returned the last one's. WAL
  // appends larger than the buffer go to the file directly.
  db.writable_file_max_buffer_size = 64 << 10;
  // No rate limiter for flushes and compactions: RocksDB's (7.8) can leave
  // every requester waiting with no thread timed to refill it, when three
  // background jobs ask at once. The flush then never ends, and the memtable
  // budget holds every write behind it: the agent stopped persisting for
  // good. bytes_per_sync spreads their writes instead.
  db.wal_bytes_per_sync = 0;
  db.info_log = std::make_shared<ForwardingLogger>();
  db.listeners.push_back(std::make_shared<NoAutoRecovery>());
  if (o.env) db.env = o.env;

  auto cache = rocksdb::NewLRUCache(o.block_cache_bytes);
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = cache;
  table.cache_index_and_filter_blocks = true;
  table.block_size = 16 << 10;
  // Block checksums in XXH3, fast on every architecture: Debian builds RocksDB
  // for any CPU of its architecture, so its CRC32C goes a table lookup at a
  // time, over every block flushed, compacted and read. (WAL records keep
  // RocksDB's CRC32C, which nothing can change.) Files written with CRC32C
  // still read back: each file names its own checksum.
  table.checksum = rocksdb::kXXH3;
  // Indexes and filters in small partitions with a pinned top level: a lookup
  // reads one partition of a few KiB through the block cache. Whole filter
  // blocks of large files (MiBs each) do not fit the cache and were read
  // from the file on every lookup once the backlog grew.
  table.index_type = rocksdb::BlockBasedTableOptions::kTwoLevelIndexSearch;
  table.partition_filters = true;
  table.metadata_block_size = 4096;
  table.pin_top_level_index_and_filter = true;
  table.cache_index_and_filter_blocks_with_high_priority = true;

  std::vector<rocksdb::ColumnFamilyDescriptor> descs;
  for (size_t i = 0; i < kCfCount; ++i) {
    rocksdb::ColumnFamilyOptions cf;
    rocksdb::BlockBasedTableOptions t = table;
    if (i == kEvents) {
      // Messages stored before the log are read by their trace's prefix: a
      // prefix filter lets the read skip every file that holds none of them.
      cf.prefix_extractor = std::make_shared<TracePrefix>();
      t.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
      t.whole_key_filtering = false;
    } else if (i == kTraces) {
      // Most lookups of a new trace's state find nothing: filters answer
      // them without reading blocks, in the files and in the memtables.
      t.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
      cf.memtable_prefix_bloom_size_ratio = 0.05;
      cf.memtable_whole_key_filtering = true;
    }
    cf.table_factory.reset(rocksdb::NewBlockBasedTableFactory(t));
    cf.level_compaction_dynamic_level_bytes = true;
    cf.write_buffer_size = i == kEvents ? (o.memtable_budget_bytes / 3) : (4 << 20);
    cf.max_write_buffer_number = 3;
    // In blocks whose freed pages the allocator keeps for the next memtable.
    cf.arena_block_size = kKeptBlockBytes;
    // Trace ids are random, so every flushed file of the trace states (and
    // runs) overlaps the whole of the level below, and a compaction rewrites
    // it. Compacting 16 files at a time (RocksDB's default is 4) rewrites it a
    // quarter as often: half the compaction CPU of 8 under the side-by-side
    // job's outage, for a few more files whose filters a lookup of a new
    // trace's state probes. Pending records are removed where the assembler
    // has got to, below the ones written since, so each flushed file of them
    // spans the records still waiting. At 16 files more of them meet their
    // removals within one compaction and go, and its compactions wrote about
    // a quarter of what they did at 4 (docs/benchmarks.md, "The twentieth
    // round"). The log's files do not overlap: they are moved down, not
    // rewritten.
    if (i == kTraces || i == kPending) cf.level0_file_num_compaction_trigger = 16;
    // Room for bursts before RocksDB slows writes (default 20 and 36 files).
    cf.level0_slowdown_writes_trigger = 36;
    cf.level0_stop_writes_trigger = 72;
    cf.compression =
        (i == kEvents || i == kOutbox) ? rocksdb::kLZ4Compression : rocksdb::kNoCompression;
    if (i == kTraces) {
      cf.merge_operator = std::make_shared<AddOperator>();
      cf.max_successive_merges = 32;
    }
    descs.emplace_back(kCfNames[i], cf);
  }
  // Extra column families (written by a newer version) must be opened too.
  std::vector<std::string> existing;
  if (rocksdb::DB::ListColumnFamilies(db, path, &existing).ok()) {
    for (const std::string& name : existing) {
      bool known = name == rocksdb::kDefaultColumnFamilyName;
      for (const auto& d : descs)
        known = known || d.name == name;
      if (!known) descs.emplace_back(name, rocksdb::ColumnFamilyOptions());
    }
  }
  // The default column family holds nothing. Its memtable size still counts:
  // RocksDB preallocates each new WAL file for the largest memtable, and with
  // the default 64 MiB each memtable switch allocated 32 MiB on the write path.
  rocksdb::ColumnFamilyOptions unused;
  unused.write_buffer_size = 1 << 20;
  descs.emplace_back(rocksdb::kDefaultColumnFamilyName, unused);

  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db, path, descs, &handles, &raw);
  if (!s.ok()) return from_rocks(s, "opening the store at " + path);
  out->reset(raw);
  *handles_out = std::move(handles);
  return Status::Ok();
}

// Operations share the store; only a reopen takes it alone. Under
// ThreadSanitizer every operation takes it alone: Debian's RocksDB is not
// built for TSan, and its own ordering between threads (write groups handing
// batches and the WAL buffer to a leader, the memtable's lock-free skip list)
// is invisible to it, so concurrent calls would be reported as races in
// RocksDB's memory. Serialised, what TSan reports is about this code.
#if defined(__SANITIZE_THREAD__)
using StoreLock = std::unique_lock<std::shared_mutex>;

// RocksDB's table reader keeps the names its built-in filter policy answers
// to in a function-local static, built by the first thread to open a table
// file with a filter; other threads then pass its guard by an inline check in
// the uninstrumented library, so TSan reports the names' strings as a race
// between two background threads. Opening one such file here, before RocksDB
// has started a thread, builds it on this thread first.
void build_rocksdb_statics_for_tsan() {
  static std::once_flag once;
  std::call_once(once, [] {
    rocksdb::Options o;
    rocksdb::BlockBasedTableOptions t;
    t.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
    o.table_factory.reset(rocksdb::NewBlockBasedTableFactory(t));
    std::error_code ec;
    std::filesystem::path tmp = std::filesystem::temp_directory_path(ec);
    if (ec) return;
    std::string path = (tmp / ("sidetrace-tsan-" + std::to_string(::getpid()) + ".sst")).string();
    rocksdb::SstFileWriter w(rocksdb::EnvOptions(), o);
    if (w.Open(path).ok() && w.Put("k", "v").ok() && w.Finish().ok()) {
      rocksdb::SstFileReader r(o);
      (void)r.Open(path);
    }
    std::filesystem::remove(path, ec);
  });
}
#else
using StoreLock = std::shared_lock<std::shared_mutex>;
inline void build_rocksdb_statics_for_tsan() {}
#endif

class RocksStore final : public Store {
 public:
  // `o.env` is `env` when one is given; the store keeps both for reopening.
  RocksStore(const StoreOptions& o, std::shared_ptr<ReclaimingFileSystem> reclaim,
             std::unique_ptr<rocksdb::Env> env, std::unique_ptr<rocksdb::DB> db,
             std::vector<rocksdb::ColumnFamilyHandle*> cfs)
      : opts_(o),
        clock_(o.clock ? *o.clock : system_clock()),
        reclaim_(std::move(reclaim)),
        env_(std::move(env)),
        db_(std::move(db)),
        cfs_(cfs) {
    wo_.sync = o.sync == SyncMode::kFsync;
    // Writes derived from stored events (a revision's emission, forgetting or
    // dropping retained state) are not synced on their own: the events they
    // come from are durable already, and the WAL keeps a prefix of writes, so
    // a power loss can only undo such a write whole, and the trace is then
    // assembled and emitted again (at least once). Any later synced write
    // makes them durable too. Delivery's writes (outbox acknowledgements,
    // batch records, dead letters) are not synced either: undone, they
    // deliver something again, and lose nothing. A sync costs a few hundred
    // us of CPU on a virtual machine; three per delivered batch were more
    // than the batch's own work at an everyday load.
    wo_derived_.sync = false;
  }

  ~RocksStore() override { close_db(); }  // db_ is null after a failed reopen

  Status load_counters() {
    uint64_t v;
    Status s = get_u64(kCounterEventNext, &next_seq_, true);
    if (!s.ok()) return s;
    s = get_u64(kCounterOutboxNext, &next_outbox_, true);
    if (!s.ok()) return s;
    if (next_seq_ == 0) next_seq_ = 1;
    if (next_outbox_ == 0) next_outbox_ = 1;
    s = get_u64(kCounterLive, &v, false);
    if (!s.ok()) return s;
    live_.store(v);
    s = get_u64(kCounterOutboxN, &v, false);
    if (!s.ok()) return s;
    outbox_n_.store(v);
    s = get_u64(kCounterOutboxB, &v, false);
    if (!s.ok()) return s;
    outbox_b_.store(v);
    // Messages stored before the log are read and dropped as they were
    // until the last of them goes.
    rocksdb::ReadOptions ro;
    ro.total_order_seek = true;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, cfs_[kEvents]));
    it->Seek(std::string(1, kLogTag + 1));
    legacy_events_ = it->Valid();
    if (!it->status().ok()) return from_rocks(it->status(), "opening the events");
    s = get_u64(kCounterLogFloor, &floor_, true);
    if (!s.ok()) return s;
    s = get_u64(kCounterGarbage, &v, false);
    if (!s.ok()) return s;
    garbage_.store(v);
    // Files the front passed before a restart, if they were not deleted then.
    delete_files_below_floor();
    return Status::Ok();
  }

  // ---- outbox ----

  Status read_outbox(uint64_t from_seq, size_t max_entries, size_t max_bytes,
                     std::vector<OutboxEntry>* out) override {
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
      std::unique_ptr<rocksdb::Iterator> it(
          db_->NewIterator(rocksdb::ReadOptions(), cfs_[kOutbox]));
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

  // Moves the document of recipe entry `seq` out of memory; false when it
  // is not there.
  bool take_document(uint64_t seq, Document* document) {
    std::lock_guard lock(docs_mu_);
    auto it = docs_.find(seq);
    if (it == docs_.end()) return false;
    docs_bytes_.fetch_sub(it->second->size());
    *document = std::move(it->second);
    docs_.erase(it);
    return true;
  }

  void forget_document(uint64_t seq) {
    Document unused;
    take_document(seq, &unused);
  }

  Status ack_outbox(std::span<const uint64_t> seqs) override {
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

  // What an entry read by read_outbox() is, for its removal.
  struct ReadEntry {
    std::string trace_id;  // for a recipe entry (its trace's retention)
    size_t value_bytes = 0, document_bytes = 0;
    uint64_t emitted_ns = 0;
    bool by_recipe = false, counted = false;  // OutboxValue's
  };

  // Keeps what read_outbox() saw of `seen`, unless an entry was removed
  // since `removals` was read (its view may hold entries no longer there).
  void remember_read(uint64_t removals, std::vector<std::pair<uint64_t, ReadEntry>>& seen) {
    std::lock_guard lock(outbox_mu_);
    if (removals_.load() != removals) return;
    if (read_entries_.size() + seen.size() > kMaxReadEntries) read_entries_.clear();
    for (auto& [seq, entry] : seen)
      read_entries_.insert_or_assign(seq, std::move(entry));
  }

  uint64_t outbox_entries() const override { return outbox_n_.load(); }
  uint64_t outbox_bytes() const override { return outbox_b_.load(); }

  void set_outbox_listener(std::function<void()> fn) override {
    std::lock_guard lock(listener_mu_);
    listener_ = std::move(fn);
  }

  void set_document_builder(DocumentBuilder fn) override {
    std::lock_guard lock(listener_mu_);
    builder_ = std::move(fn);
  }

  // ---- meta ----

  Status meta_put(std::string_view key, std::string_view value) override {
    StoreLock db_lock(db_mu_);
    if (!db_) return unavailable();
    rocksdb::WriteBatch b;
    b.Put(cfs_[kMeta], key, value);
    return from_rocks(write(wo_derived_, &b), "meta_put");
  }
  Status meta_get(std::string_view key, std::string* value) override {
    StoreLock db_lock(db_mu_);
    if (!db_) return unavailable();
    return from_rocks(db_->Get(rocksdb::ReadOptions(), cfs_[kMeta], key, value), "meta_get");
  }
  Status meta_delete(std::string_view key) override {
    StoreLock db_lock(db_mu_);
    if (!db_) return unavailable();
    rocksdb::WriteBatch b;
    b.Delete(cfs_[kMeta], key);
    return from_rocks(write(wo_derived_, &b), "meta_delete");
  }
  Status meta_scan(std::string_view prefix, size_t limit,
                   std::vector<std::pair<std::string, std::string>>* out) override {
    return meta_scan_after(prefix, {}, limit, out);
  }
  Status meta_scan_after(std::string_view prefix, std::string_view after, size_t limit,
                         std::vector<std::pair<std::string, std::string>>* out) override {
    StoreLock db_lock(db_mu_);
    if (!db_) return unavailable();
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cfs_[kMeta]));
    if (after.empty() || after < prefix) {
      it->Seek(prefix);
    } else {
      it->Seek(after);
      if (it->Valid() && it->key() == after) it->Next();
    }
    size_t n = 0;
    for (; it->Valid() && n < limit && it->key().starts_with(prefix); it->Next()) {
      out->emplace_back(it->key().ToString(), it->value().ToString());
      ++n;
    }
    return from_rocks(it->status(), "meta_scan");
  }
  Status meta_write(const MetaWrite& w) override {
    StoreLock db_lock(db_mu_);
    if (!db_) return unavailable();
    rocksdb::WriteBatch b;
    for (const auto& [k, v] : w.put)
      b.Put(cfs_[kMeta], k, v);
    for (const auto& k : w.del)
      b.Delete(cfs_[kMeta], k);
    return from_rocks(write(wo_derived_, &b), "meta_write");
  }

  // ---- events ----

  Status append(std::span<const ipc::Message> msgs, std::vector<Committed>* out) override {
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

  Status ensure_room(uint64_t bytes) override {
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

  bool needs_resume() const override { return write_failed_.load(); }

  Status resume() override {
    // Cleared first: a write that fails from here on asks for the next resume.
    write_failed_.store(false);
    Status s = resume_db();
    if (!s.ok()) write_failed_.store(true);
    return s;
  }

  Status resume_db() {
    // Always a reopen, never DB::Resume(): after a failed WAL write, Resume()
    // can answer OK and leave the failed WAL file in use, and the next write
    // to it aborts the process. A reopen starts a new WAL; everything
    // acknowledged is in the old WAL or in SSTs.
    std::unique_lock db_lock(db_mu_);
    spdlog::warn("buffer: reopening the store after a failed write");
    {
      // A failed write may still have reached the WAL: entries are read again.
      std::lock_guard lock(outbox_mu_);
      read_entries_.clear();
      removals_.fetch_add(1);
    }
    close_db();
    Status s = open_db(opts_, &db_, &cfs_);
    if (!s.ok()) return s;
    return load_counters();
  }

  // ---- traces ----

  using Store::read_trace;
  Status read_trace(std::string_view trace_id, const TraceRange& range,
                    std::vector<StoredEvent>* out, bool* more) override {
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

  Status read_records(std::string_view trace_id, std::span<const RecordRef> records,
                      size_t max_bytes, std::vector<StoredEvent>* out) override {
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
          failed =
              !statuses[i].ok() && !statuses[i].IsNotFound()
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

  // Requires db_mu_. Reads the messages of `trace_id` in `range` stored
  // before the log into `take`, until it refuses one.
  template <typename Take>
  Status read_legacy(std::string_view trace_id, const TraceRange& range, Take& take) {
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

  Status scan_pending(uint64_t from_seq, size_t limit, std::vector<Committed>* out) override {
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

  Status release_pending(std::string_view trace_id, std::span<const uint64_t> seqs) override {
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

  Status get_state(std::string_view trace_id, TraceState* out) override {
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

  Status get_state_nolock(std::string_view trace_id, TraceState* out) {
    std::string v;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), cfs_[kTraces], state_key(trace_id), &v);
    if (!s.ok()) return from_rocks(s, "reading a trace state");
    if (!decode_state(v, out)) return Status::Corruption("malformed trace state");
    return Status::Ok();
  }

  // The seq of the first entry of `trace_id` the outbox still holds between
  // the state's pin_first and pin_last (0: none). One lookup for a trace
  // with one recipe entry; the entries between them otherwise.
  Status first_waiting(std::string_view trace_id, const TraceState& st, uint64_t* seq) {
    *seq = 0;
    if (st.pin_last == 0 || st.pin_last < outbox_low_) return Status::Ok();
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

  // Requires state_mu_. Moves outbox_low_ up to the outbox's first entry:
  // once for a round of drops, whose traces were mostly delivered long ago,
  // so that each needs no lookup of its entries (first_waiting()). Steps over
  // the entries removed since the last time, once.
  Status refresh_outbox_low() {
    const uint64_t next = next_outbox_;  // no emission meanwhile (state_mu_)
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cfs_[kOutbox]));
    it->Seek(be64(outbox_low_));
    if (!it->status().ok()) return from_rocks(it->status(), "reading the outbox");
    outbox_low_ = it->Valid() && it->key().size() == 8 ? get_be64(it->key().ToStringView()) : next;
    return Status::Ok();
  }

  // Whether an outbox entry still refers to the events of `trace_id`, whose
  // state is `st`.
  Status pinned(std::string_view trace_id, const TraceState& st, bool* pinned) {
    *pinned = st.undelivered != 0;
    if (*pinned) return Status::Ok();
    uint64_t seq = 0;
    Status s = first_waiting(trace_id, st, &seq);
    *pinned = seq != 0;
    return s;
  }

  Status emit(const Emission& e, uint64_t* outbox_seq) override {
    Status result;
    Status s = emit_many({&e, 1}, {&result, 1}, {outbox_seq, 1});
    return s.ok() ? result : s;
  }

  Status emit_many(std::span<const Emission> es, std::span<Status> results,
                   std::span<uint64_t> outbox_seqs) override {
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

  // Keeps `document` in memory as outbox entry `seq`'s (shared with the
  // emitter, not copied); false when it does not fit
  // opts_.document_cache_bytes.
  bool hold_document(uint64_t seq, const Document& document) {
    std::lock_guard lock(docs_mu_);
    if (docs_bytes_.load() + document->size() > opts_.document_cache_bytes) return false;
    docs_.emplace(seq, document);
    docs_bytes_.fetch_add(document->size());
    return true;
  }

  // Adds one revision's writes to `b` as outbox entry `outbox_seq`. Busy when
  // the trace's state changed since the revision was built.
  Status add_emission_locked(const Emission& e, uint64_t outbox_seq, bool by_recipe,
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

  Status expire(uint64_t emitted_before_ns, uint64_t forget_before_ns, size_t max_traces) override {
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

  Status compact() override {
    StoreLock db_lock(db_mu_);
    if (!db_) return unavailable();
    for (auto* h : cfs_) {
      rocksdb::Status s = db_->CompactRange(rocksdb::CompactRangeOptions(), h, nullptr, nullptr);
      if (!s.ok()) return from_rocks(s, "compacting");
    }
    return Status::Ok();
  }

  StoreCounters counters() const override {
    StoreCounters c;
    c.live_bytes = live_.load();
    c.dropped_retained_traces = counters_.dropped_retained_traces.load();
    c.dropped_retained_events = counters_.dropped_retained_events.load();
    c.dropped_outbox_entries = counters_.dropped_outbox_entries.load();
    c.documents_rebuilt = documents_rebuilt_.load();
    c.document_cache_bytes = docs_bytes_.load();
    c.expired_traces = counters_.expired_traces.load();
    c.forgotten_traces = counters_.forgotten_traces.load();
    ReclaimStats r = reclaim_->stats();
    c.reclaimed_bytes = r.reclaimed_bytes;
    c.reclaim_pending_bytes = r.pending_bytes;
    c.log_garbage_bytes = garbage_.load();
    c.log_moved_messages = moved_.load();
    return c;
  }

 private:
  static Status unavailable() {
    return Status::IOError("the store is closed after a write failure; waiting to reopen it");
  }

  // Every write goes through here: a failed one leaves RocksDB in its
  // background-error state, which only resume() clears, whichever thread
  // (writer, assembler, delivery) made the write.
  rocksdb::Status write(const rocksdb::WriteOptions& wo, rocksdb::WriteBatch* b) {
    rocksdb::Status s = db_->Write(wo, b);
    if (!s.ok() && !s.IsInvalidArgument()) write_failed_.store(true);
    return s;
  }

  // Requires db_mu_ held exclusively (or no other user).
  void close_db() {
    if (!db_) return;
    for (auto* h : cfs_)
      db_->DestroyColumnFamilyHandle(h);
    cfs_.clear();
    rocksdb::Status s = db_->Close();
    if (!s.ok()) spdlog::warn("buffer: closing the store: {}", s.ToString());
    db_.reset();
  }

  Status get_u64(const std::string& key, uint64_t* v, bool big_endian) {
    std::string s;
    rocksdb::Status rs = db_->Get(rocksdb::ReadOptions(), cfs_[kTraces], key, &s);
    *v = 0;
    if (rs.IsNotFound()) return Status::Ok();
    if (!rs.ok()) return from_rocks(rs, "reading the store counters");
    if (s.size() != 8) return Status::Corruption("malformed store counter " + key);
    if (big_endian) {
      *v = get_be64(s);
    } else {
      int64_t i = decode_i64(s);
      *v = i < 0 ? 0 : static_cast<uint64_t>(i);
    }
    return Status::Ok();
  }

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
  void put_index_key(rocksdb::WriteBatch* b, char prefix, uint64_t ns, std::string_view trace_id) {
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

  // Requires state_mu_. Adds to `out` the index keys with the given prefix
  // in [from, until) (until empty: no bound) whose time is < `before_ns`,
  // oldest first, up to `limit` keys in `out`. True when it reached `until`.
  bool scan_index(char prefix, const std::string& from, const std::string& until,
                  uint64_t before_ns, size_t limit, std::vector<std::string>* out, Status* status) {
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

  // Deletes the retained events of the oldest traces in the retention index
  // (emitted before `before_ns`), in one write: at most `limit` traces,
  // stopping once the store's live bytes are down to `target` (0: no such
  // stop). Each trace keeps its state, with events_deleted set. `*keys`
  // (optional) counts the index keys taken, those that dropped nothing too.
  Status drop_retained(uint64_t before_ns, size_t limit, uint64_t target, uint64_t* traces,
                       uint64_t* events, size_t* keys = nullptr) {
    std::lock_guard lock(state_mu_);
    if (Status front = refresh_outbox_low(); !front.ok()) return front;
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
  Iterators drop_iterators() {
    Iterators its;
    its.runs.reset(db_->NewIterator(rocksdb::ReadOptions(), cfs_[kTraces]));
    if (legacy_events_) {
      rocksdb::ReadOptions ro;
      ro.prefix_same_as_start = true;
      its.legacy.reset(db_->NewIterator(ro, cfs_[kEvents]));
    }
    return its;
  }

  // Requires state_mu_. Adds to `b` the deletion of the retention index key
  // `rkey` and of the retained events (seq <= max_seq) of the trace it names,
  // found with `its`. The state stays, with events_deleted set; `tally`
  // counts what goes.
  Status add_events_drop(const std::string& rkey, Iterators& its, uint64_t now,
                         rocksdb::WriteBatch* b, DropTally* tally,
                         const std::vector<Run>* known_runs = nullptr) {
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

  // Adds to `b` the deletion of the trace's runs (`known`, or else found with
  // `runs`, an iterator over the traces family) up to seq `max_seq`: a run
  // that goes on past it keeps the rest. Their messages stay in the log as
  // garbage until its front passes them (reclaim_log()).
  Status add_runs_drop(const std::string& trace_id, uint64_t max_seq, rocksdb::Iterator* runs,
                       const std::vector<Run>* known, rocksdb::WriteBatch* b, DropTally* tally) {
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
  Status drop_at_log_front(uint64_t target) {
    bool moved = false;
    {
      std::lock_guard append_lock(append_mu_);
      Status s = move_front(Front::kRoom, target, &moved);
      if (!s.ok()) return s;
    }
    if (moved) delete_files_below_floor();
    return Status::Ok();
  }

  // Requires db_mu_ (shared). Moves the front while the garbage is past its
  // bound (in steps), with `how` kReclaim or kReclaimForRoom.
  Status reclaim_log(Front how) {
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

  // Requires append_mu_. Moves the front over up to kStepBytes of the log,
  // as `how` says (`live_target`: for Front::kRoom); `moved` tells whether
  // it moved. A retained trace met (emitted and delivered) is dropped rather
  // than moved when the quota asks for room, as the quota would drop it soon.
  Status move_front(Front how, uint64_t live_target, bool* moved) {
    std::lock_guard state_lock(state_mu_);
    if (Status front = refresh_outbox_low(); !front.ok()) return front;
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
        return static_cast<int64_t>(live_.load()) + dropped.live >
               static_cast<int64_t>(live_target);
      }
      return garbage_.load() + dropped.garbage > garbage + garbage_low();
    };
    while (it->Valid() && read < kStepBytes && more()) {
      LogValue v;
      if (!is_log_key(it->key().ToStringView()) ||
          !parse_log_value(it->value().ToStringView(), &v)) {
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

  // Requires state_mu_. Adds to `b` the drop of the trace's retained
  // messages when its run at the front (`seq`) is among them (the trace is
  // emitted, and no outbox entry refers to it); `max_seq` is then the last of
  // them (0: nothing dropped). A trace whose revision ends within a run (it
  // went out in parts) is left to the other drops.
  Status drop_at_front(const std::string& trace_id, uint64_t seq, const std::vector<Run>& runs,
                       Iterators& its, uint64_t now, rocksdb::WriteBatch* b, DropTally* tally,
                       uint64_t* max_seq) {
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

  // The runs of `trace_id`, read with `runs` (an iterator over the traces
  // family).
  Status load_runs(const std::string& trace_id, rocksdb::Iterator* runs, std::vector<Run>* out) {
    const std::string prefix = run_prefix(trace_id);
    for (runs->Seek(prefix); runs->Valid() && runs->key().starts_with(prefix); runs->Next()) {
      Run& r = out->emplace_back();
      if (!parse_run(runs->key().ToStringView(), prefix.size(), runs->value().ToStringView(), &r)) {
        return Status::Corruption("a malformed run of trace messages");
      }
    }
    return from_rocks(runs->status(), "reading a trace's runs");
  }

  // Deletes the log's table files that lie wholly below its front.
  void delete_files_below_floor() {
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

  // The bytes (keys and values) of the `n` messages in the log from `pos`.
  Status log_bytes(uint64_t pos, uint64_t n, uint64_t* bytes) {
    *bytes = 0;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cfs_[kEvents]));
    uint64_t i = 0;
    for (it->Seek(log_key(pos)); it->Valid() && i < n; it->Next(), ++i) {
      if (it->key() != log_key(pos + i)) return Status::Corruption("a run's message is missing");
      *bytes += it->key().size() + it->value().size();
    }
    return from_rocks(it->status(), "reading the log");
  }

  // Drops up to `limit` of the oldest entries, stopping once `enough` bytes went.
  Status drop_oldest_outbox(size_t limit, uint64_t enough, uint64_t* dropped) {
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
  Status commit_outbox_removal(rocksdb::WriteBatch& b, const Removal& r, std::string_view what) {
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
    live_.fetch_sub(r.live);
    outbox_n_.fetch_sub(r.n);
    outbox_b_.fetch_sub(r.doc_bytes);
    for (uint64_t seq : r.seqs) {
      forget_document(seq);
      read_entries_.erase(seq);
    }
    return Status::Ok();
  }

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
  // Guarded by state_mu_. The outbox holds no entry below it (entries are
  // written at next_outbox_ and up, and only removed after).
  uint64_t outbox_low_ = 0;
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

}  // namespace

Status Store::open(const StoreOptions& options, std::unique_ptr<Store>* out) {
  if (options.data_dir.empty()) return Status::InvalidArgument("data_dir is empty");
  build_rocksdb_statics_for_tsan();
  // Deleted WAL and table files give their space back gradually (see
  // reclaim.h), over whichever filesystem the store was given.
  ReclaimOptions ro;
  ro.trash_dir = (std::filesystem::path(options.data_dir) / "store" / "reclaim").string();
  // Only group commits that sync wait for the journal; with "os" a file's
  // space is freed in one step (still off the caller's thread).
  if (options.sync != SyncMode::kFsync) ro.step_bytes = UINT64_MAX;
  auto reclaim = std::make_shared<ReclaimingFileSystem>(
      options.env ? options.env->GetFileSystem() : rocksdb::FileSystem::Default(), ro);
  std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(reclaim);
  StoreOptions o = options;
  o.env = env.get();
  std::unique_ptr<rocksdb::DB> db;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  Status s = open_db(o, &db, &handles);
  if (!s.ok()) return s;
  reclaim->start();
  auto store = std::make_unique<RocksStore>(o, std::move(reclaim), std::move(env), std::move(db),
                                            std::move(handles));
  s = store->load_counters();
  if (!s.ok()) return s;
  spdlog::debug("buffer: store opened at {} (log checksums: CRC32C by {})", o.data_dir,
                crc32c_implementation());
  *out = std::move(store);
  return Status::Ok();
}

Status open_or_quarantine(const StoreOptions& o, std::unique_ptr<Store>* out,
                          std::string* quarantined) {
  if (quarantined) quarantined->clear();
  Status s = Store::open(o, out);
  if (s.ok() || !(s.IsCorruption() || s.code() == Status::Code::kIOError)) return s;
  namespace fs = std::filesystem;
  const Clock& clock = o.clock ? *o.clock : system_clock();
  fs::path from = fs::path(o.data_dir) / "store";
  std::error_code ec;
  if (!fs::exists(from, ec)) return s;  // nothing to move aside: the error is elsewhere
  std::string base = (fs::path(o.data_dir) / "store.corrupt-").string() +
                     std::to_string(clock.now_ns() / 1'000'000'000ull);
  fs::path to = base;
  for (int i = 1; fs::exists(to, ec); ++i)
    to = base + "." + std::to_string(i);
  fs::rename(from, to, ec);
  if (ec) {
    return Status::IOError("the store cannot be opened (" + s.ToString() +
                           ") and cannot be moved aside: " + ec.message());
  }
  spdlog::error(
      "buffer: the store at {} cannot be opened ({}); it was moved to {} and a new, empty "
      "store is started. The old data is kept there for inspection.",
      from.string(), s.ToString(), to.string());
  if (quarantined) *quarantined = to.string();
  return Store::open(o, out);
}

}  // namespace sidetrace::buffer

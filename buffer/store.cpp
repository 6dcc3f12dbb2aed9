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
#include "buffer/detail/rocks_store.h"
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

namespace detail {

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

namespace {

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

constexpr const char* kCfNames[kCfCount] = {"events", "pending", "traces", "outbox", "meta"};

}  // namespace

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

namespace {

#if defined(__SANITIZE_THREAD__)
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
inline void build_rocksdb_statics_for_tsan() {}
#endif

}  // namespace

RocksStore::RocksStore(const StoreOptions& o, std::shared_ptr<ReclaimingFileSystem> reclaim,
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

Status RocksStore::load_counters() {
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
  // The outbox's first entry, found once; removals move it on from there.
  outbox_front_.store(0);
  removed_ahead_.clear();
  max_removed_ = 0;
  s = seek_outbox_front(next_outbox_);
  if (!s.ok()) return s;
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

Status RocksStore::resume() {
  // Cleared first: a write that fails from here on asks for the next resume.
  write_failed_.store(false);
  Status s = resume_db();
  if (!s.ok()) write_failed_.store(true);
  return s;
}

Status RocksStore::resume_db() {
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

Status RocksStore::compact() {
  StoreLock db_lock(db_mu_);
  if (!db_) return unavailable();
  for (auto* h : cfs_) {
    rocksdb::Status s = db_->CompactRange(rocksdb::CompactRangeOptions(), h, nullptr, nullptr);
    if (!s.ok()) return from_rocks(s, "compacting");
  }
  return Status::Ok();
}

StoreCounters RocksStore::counters() const {
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

rocksdb::Status RocksStore::write(const rocksdb::WriteOptions& wo, rocksdb::WriteBatch* b) {
  rocksdb::Status s = db_->Write(wo, b);
  if (!s.ok() && !s.IsInvalidArgument()) write_failed_.store(true);
  return s;
}

void RocksStore::close_db() {
  if (!db_) return;
  for (auto* h : cfs_)
    db_->DestroyColumnFamilyHandle(h);
  cfs_.clear();
  rocksdb::Status s = db_->Close();
  if (!s.ok()) spdlog::warn("buffer: closing the store: {}", s.ToString());
  db_.reset();
}

Status RocksStore::get_u64(const std::string& key, uint64_t* v, bool big_endian) {
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

}  // namespace detail

Status Store::open(const StoreOptions& options, std::unique_ptr<Store>* out) {
  if (options.data_dir.empty()) return Status::InvalidArgument("data_dir is empty");
  detail::build_rocksdb_statics_for_tsan();
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
  Status s = detail::open_db(o, &db, &handles);
  if (!s.ok()) return s;
  reclaim->start();
  auto store = std::make_unique<detail::RocksStore>(o, std::move(reclaim), std::move(env),
                                                    std::move(db), std::move(handles));
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

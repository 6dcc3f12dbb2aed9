// Gradual release of the disk space of deleted store files.
//
// RocksDB deletes a write-ahead log file once every column family has flushed
// what it held, and a table file once a compaction replaced it; a flush of the
// small column families can free dozens of WAL files at once. On a filesystem
// mounted with online discard (ext4 `discard`, common on cloud and VM disks),
// the journal commit after such a deletion waits for the device to discard
// every freed extent, and every fdatasync of the WAL waits for that commit:
// group commits stalled for tens of milliseconds. ReclaimingFileSystem moves
// such files aside (a rename, which frees nothing) and a background thread
// shrinks them a step at a time before unlinking them, so that each journal
// commit carries a small, bounded amount of freed space.
//
// Thread safety: DeleteFile() may be called from any thread; stats() too.
#pragma once

#include <rocksdb/file_system.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace sidetrace::buffer {

struct ReclaimOptions {
  // Where deferred files wait; created when absent. Files left in it by an
  // earlier run (a crash) are reclaimed by start().
  std::string trash_dir;
  // Freed per step (one ftruncate), and the pause after each step.
  uint64_t step_bytes = 256 << 10;
  std::chrono::microseconds pause{1000};
  // Above this many bytes waiting, steps follow each other without pauses:
  // the space comes back at the disk's pace rather than piling up.
  uint64_t hurry_bytes = 512ull << 20;
  // With less than this free on the filesystem, no pauses either: space is
  // worth more than smooth commits then (a nearly full disk, a small volume).
  uint64_t low_space_bytes = 1ull << 30;
};

struct ReclaimStats {
  uint64_t deferred_files = 0;  // handed to the background thread
  uint64_t reclaimed_files = 0;
  uint64_t reclaimed_bytes = 0;  // space freed (allocated size of the files)
  uint64_t steps = 0;            // ftruncate calls
  uint64_t pending_files = 0;
  uint64_t pending_bytes = 0;
  uint64_t errors = 0;  // files that were unlinked at once after a failure
};

class ReclaimingFileSystem final : public rocksdb::FileSystemWrapper {
 public:
  // Files deleted before start() wait for it.
  ReclaimingFileSystem(const std::shared_ptr<rocksdb::FileSystem>& base, ReclaimOptions options);
  // Unlinks what is still waiting (at once) and stops the thread.
  ~ReclaimingFileSystem() override;

  // Starts the background thread, and queues what an earlier run left in
  // trash_dir. Called once the store is open (and its lock held): a second
  // opener of a store in use must not touch the first one's files.
  void start();

  const char* Name() const override { return "sidetrace.ReclaimingFileSystem"; }

  // WAL (.log) and table (.sst) files are moved aside and reclaimed in the
  // background; anything else is deleted at once by the wrapped filesystem.
  rocksdb::IOStatus DeleteFile(const std::string& fname, const rocksdb::IOOptions& options,
                               rocksdb::IODebugContext* dbg) override;

  ReclaimStats stats() const;

 private:
  struct Item {
    std::string path;
    uint64_t bytes = 0;
  };

  void run();
  void reclaim(const Item& item);
  void enqueue(std::string path);

  const ReclaimOptions opts_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;  // guarded by mu_
  bool stop_ = false;       // guarded by mu_
  ReclaimStats stats_;      // guarded by mu_
  std::thread thread_;
};

}  // namespace sidetrace::buffer

// Test support: a RocksDB FileSystem that can lose power. It records, for
// every file written through it, how much has been written and how much was
// synced (Sync/Fsync), and whether the directory entry of a new file was
// synced (a directory Fsync after its creation). cut() turns the power off:
// from then on every write, sync, create and rename fails. After the store is
// closed, drop_unsynced() makes the disk what it would be after the cut:
// every file is truncated to what was synced, and a new file whose directory
// entry was never synced is removed. Header-only, test-only.
//
// The model, like a journaling filesystem's: a sync makes a file's bytes up to
// then durable; sync_file_range (RangeSync) makes nothing durable; renames and
// deletes count as done at once.
//
// Thread safety: every method may be called from any thread.
#pragma once

#include <rocksdb/env.h>
#include <rocksdb/file_system.h>

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace sidetrace::buffer::testing {

class PowerCutFileSystem final : public rocksdb::FileSystemWrapper {
 public:
  PowerCutFileSystem() : FileSystemWrapper(rocksdb::FileSystem::Default()) {}

  const char* Name() const override { return "PowerCutFileSystem"; }

  // Turns the power off: what was synced before stays, nothing else happens.
  void cut() {
    std::lock_guard lock(s_->mu);
    s_->off = true;
  }
  // Turns the power off just after the n-th write (append) from now: that
  // write reaches the page cache, its sync does not happen.
  void cut_after_writes(int n) {
    std::lock_guard lock(s_->mu);
    s_->writes_left = n;
  }
  bool is_off() const {
    std::lock_guard lock(s_->mu);
    return s_->off;
  }

  // Call with the store closed: leaves on disk only what survived the cut,
  // turns the power back on and forgets every file. Returns the number of
  // bytes thrown away.
  uint64_t drop_unsynced() {
    std::lock_guard lock(s_->mu);
    uint64_t dropped = 0;
    for (const auto& [path, f] : s_->files) {
      std::error_code ec;
      const auto size = std::filesystem::file_size(path, ec);
      if (ec) continue;  // deleted
      if (f.is_new && !f.entry_synced) {
        dropped += size;
        std::filesystem::remove(path, ec);
      } else if (size > f.synced) {
        dropped += size - f.synced;
        std::filesystem::resize_file(path, f.synced, ec);
      }
    }
    s_->files.clear();
    s_->off = false;
    s_->writes_left = -1;
    return dropped;
  }

  rocksdb::IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r,
                                    rocksdb::IODebugContext* dbg) override {
    std::lock_guard lock(s_->mu);
    if (s_->off) return power_off();
    rocksdb::IOStatus st = target()->NewWritableFile(f, o, r, dbg);
    if (st.ok()) {
      s_->files[f] = FileState{.is_new = true};
      *r = std::make_unique<File>(std::move(*r), s_, f);
    }
    return st;
  }

  rocksdb::IOStatus ReopenWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                       std::unique_ptr<rocksdb::FSWritableFile>* r,
                                       rocksdb::IODebugContext* dbg) override {
    std::lock_guard lock(s_->mu);
    if (s_->off) return power_off();
    std::error_code ec;
    const bool existed = std::filesystem::exists(f, ec);
    const uint64_t size = existed ? std::filesystem::file_size(f, ec) : 0;
    rocksdb::IOStatus st = target()->ReopenWritableFile(f, o, r, dbg);
    if (st.ok()) {
      // What was there before counts as durable (written before this run).
      s_->files.try_emplace(f, FileState{.written = size, .synced = size, .is_new = !existed});
      *r = std::make_unique<File>(std::move(*r), s_, f);
    }
    return st;
  }

  rocksdb::IOStatus NewDirectory(const std::string& name, const rocksdb::IOOptions& o,
                                 std::unique_ptr<rocksdb::FSDirectory>* r,
                                 rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus st = target()->NewDirectory(name, o, r, dbg);
    if (st.ok()) *r = std::make_unique<Directory>(std::move(*r), s_, name);
    return st;
  }

  rocksdb::IOStatus RenameFile(const std::string& src, const std::string& dst,
                               const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
    std::lock_guard lock(s_->mu);
    if (s_->off) return power_off();
    rocksdb::IOStatus st = target()->RenameFile(src, dst, o, dbg);
    if (st.ok()) {
      auto it = s_->files.find(src);
      if (it != s_->files.end()) {
        FileState moved = it->second;
        moved.is_new = false;  // the rename counts as done
        s_->files.erase(it);
        s_->files[dst] = moved;
      } else {
        s_->files.erase(dst);
      }
    }
    return st;
  }

 private:
  struct FileState {
    uint64_t written = 0;
    uint64_t synced = 0;
    bool is_new = false;        // created in this run
    bool entry_synced = false;  // its directory was synced after the creation
  };
  struct Shared {
    std::mutex mu;
    bool off = false;
    int writes_left = -1;  // cut after this many more writes; -1: no cut planned
    std::map<std::string, FileState> files;
  };
  using SharedPtr = std::shared_ptr<Shared>;

  static rocksdb::IOStatus power_off() { return rocksdb::IOStatus::IOError("injected: power cut"); }

  class File final : public rocksdb::FSWritableFileOwnerWrapper {
   public:
    File(std::unique_ptr<rocksdb::FSWritableFile> t, SharedPtr s, std::string path)
        : FSWritableFileOwnerWrapper(std::move(t)), s_(std::move(s)), path_(std::move(path)) {}

    rocksdb::IOStatus Append(const rocksdb::Slice& d, const rocksdb::IOOptions& o,
                             rocksdb::IODebugContext* dbg) override {
      std::lock_guard lock(s_->mu);
      if (s_->off) return power_off();
      rocksdb::IOStatus st = FSWritableFileOwnerWrapper::Append(d, o, dbg);
      if (st.ok()) wrote(s_->files[path_].written + d.size());
      return st;
    }
    rocksdb::IOStatus Append(const rocksdb::Slice& d, const rocksdb::IOOptions& o,
                             const rocksdb::DataVerificationInfo& v,
                             rocksdb::IODebugContext* dbg) override {
      std::lock_guard lock(s_->mu);
      if (s_->off) return power_off();
      rocksdb::IOStatus st = FSWritableFileOwnerWrapper::Append(d, o, v, dbg);
      if (st.ok()) wrote(s_->files[path_].written + d.size());
      return st;
    }
    rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& d, uint64_t off,
                                       const rocksdb::IOOptions& o,
                                       rocksdb::IODebugContext* dbg) override {
      std::lock_guard lock(s_->mu);
      if (s_->off) return power_off();
      rocksdb::IOStatus st = FSWritableFileOwnerWrapper::PositionedAppend(d, off, o, dbg);
      if (st.ok()) wrote(std::max(s_->files[path_].written, off + d.size()));
      return st;
    }
    rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& d, uint64_t off,
                                       const rocksdb::IOOptions& o,
                                       const rocksdb::DataVerificationInfo& v,
                                       rocksdb::IODebugContext* dbg) override {
      std::lock_guard lock(s_->mu);
      if (s_->off) return power_off();
      rocksdb::IOStatus st = FSWritableFileOwnerWrapper::PositionedAppend(d, off, o, v, dbg);
      if (st.ok()) wrote(std::max(s_->files[path_].written, off + d.size()));
      return st;
    }
    rocksdb::IOStatus Truncate(uint64_t size, const rocksdb::IOOptions& o,
                               rocksdb::IODebugContext* dbg) override {
      std::lock_guard lock(s_->mu);
      if (s_->off) return power_off();
      rocksdb::IOStatus st = FSWritableFileOwnerWrapper::Truncate(size, o, dbg);
      if (st.ok()) {
        FileState& f = s_->files[path_];
        f.written = std::min(f.written, size);
        f.synced = std::min(f.synced, size);
      }
      return st;
    }
    rocksdb::IOStatus Sync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
      std::lock_guard lock(s_->mu);
      if (s_->off) return power_off();
      rocksdb::IOStatus st = FSWritableFileOwnerWrapper::Sync(o, dbg);
      if (st.ok()) synced();
      return st;
    }
    rocksdb::IOStatus Fsync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
      std::lock_guard lock(s_->mu);
      if (s_->off) return power_off();
      rocksdb::IOStatus st = FSWritableFileOwnerWrapper::Fsync(o, dbg);
      if (st.ok()) synced();
      return st;
    }
    rocksdb::IOStatus Close(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
      // Closing syncs nothing; after the cut the descriptor is still released.
      return FSWritableFileOwnerWrapper::Close(o, dbg);
    }

   private:
    // Records a write that ends the file at `end`; the planned cut may follow.
    void wrote(uint64_t end) {
      s_->files[path_].written = end;
      if (s_->writes_left > 0 && --s_->writes_left == 0) s_->off = true;
    }
    void synced() {
      FileState& f = s_->files[path_];
      f.synced = f.written;
    }
    SharedPtr s_;
    std::string path_;
  };

  class Directory final : public rocksdb::FSDirectoryWrapper {
   public:
    Directory(std::unique_ptr<rocksdb::FSDirectory> t, SharedPtr s, std::string name)
        : FSDirectoryWrapper(std::move(t)), s_(std::move(s)), name_(std::move(name)) {}

    rocksdb::IOStatus Fsync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
      std::lock_guard lock(s_->mu);
      if (s_->off) return power_off();
      rocksdb::IOStatus st = FSDirectoryWrapper::Fsync(o, dbg);
      if (st.ok()) entries_synced();
      return st;
    }
    rocksdb::IOStatus FsyncWithDirOptions(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg,
                                          const rocksdb::DirFsyncOptions& d) override {
      std::lock_guard lock(s_->mu);
      if (s_->off) return power_off();
      rocksdb::IOStatus st = FSDirectoryWrapper::FsyncWithDirOptions(o, dbg, d);
      if (st.ok()) entries_synced();
      return st;
    }

   private:
    void entries_synced() {
      const std::filesystem::path dir = directory_of(std::filesystem::path(name_) / "x");
      for (auto& [path, f] : s_->files) {
        if (directory_of(path) == dir) f.entry_synced = true;
      }
    }
    static std::filesystem::path directory_of(const std::filesystem::path& file) {
      return file.lexically_normal().parent_path();
    }
    SharedPtr s_;
    std::string name_;
  };

  SharedPtr s_ = std::make_shared<Shared>();
};

}  // namespace sidetrace::buffer::testing

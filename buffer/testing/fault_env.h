// Test support: a RocksDB Env whose file writes fail with "no space left on
// device" while a flag is set, as a full disk does. Header-only, test-only.
//
// Thread safety: set_full() may be called from any thread at any time.
#pragma once

#include <rocksdb/env.h>
#include <rocksdb/file_system.h>

#include <atomic>
#include <memory>

namespace sidetrace::buffer::testing {

class NoSpaceFileSystem final : public rocksdb::FileSystemWrapper {
 public:
  NoSpaceFileSystem() : FileSystemWrapper(rocksdb::FileSystem::Default()) {}

  const char* Name() const override { return "NoSpaceFileSystem"; }

  void set_full(bool full) { full_->store(full); }
  uint64_t failures() const { return failures_->load(); }

  rocksdb::IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r,
                                    rocksdb::IODebugContext* dbg) override {
    if (full_->load()) return no_space();
    rocksdb::IOStatus s = target()->NewWritableFile(f, o, r, dbg);
    if (s.ok()) *r = std::make_unique<File>(std::move(*r), full_, failures_);
    return s;
  }

  rocksdb::IOStatus ReopenWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                       std::unique_ptr<rocksdb::FSWritableFile>* r,
                                       rocksdb::IODebugContext* dbg) override {
    if (full_->load()) return no_space();
    rocksdb::IOStatus s = target()->ReopenWritableFile(f, o, r, dbg);
    if (s.ok()) *r = std::make_unique<File>(std::move(*r), full_, failures_);
    return s;
  }

 private:
  using Flag = std::shared_ptr<std::atomic<bool>>;
  using Count = std::shared_ptr<std::atomic<uint64_t>>;

  static rocksdb::IOStatus no_space() {
    rocksdb::IOStatus s = rocksdb::IOStatus::NoSpace("injected: No space left on device");
    return s;
  }

  class File final : public rocksdb::FSWritableFileOwnerWrapper {
   public:
    File(std::unique_ptr<rocksdb::FSWritableFile> t, Flag full, Count failures)
        : FSWritableFileOwnerWrapper(std::move(t)),
          full_(std::move(full)),
          failures_(std::move(failures)) {}
    rocksdb::IOStatus Append(const rocksdb::Slice& d, const rocksdb::IOOptions& o,
                             rocksdb::IODebugContext* dbg) override {
      if (full_->load()) return fail();
      return FSWritableFileOwnerWrapper::Append(d, o, dbg);
    }
    rocksdb::IOStatus Append(const rocksdb::Slice& d, const rocksdb::IOOptions& o,
                             const rocksdb::DataVerificationInfo& v,
                             rocksdb::IODebugContext* dbg) override {
      if (full_->load()) return fail();
      return FSWritableFileOwnerWrapper::Append(d, o, v, dbg);
    }
    rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& d, uint64_t off,
                                       const rocksdb::IOOptions& o,
                                       rocksdb::IODebugContext* dbg) override {
      if (full_->load()) return fail();
      return FSWritableFileOwnerWrapper::PositionedAppend(d, off, o, dbg);
    }
    rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& d, uint64_t off,
                                       const rocksdb::IOOptions& o,
                                       const rocksdb::DataVerificationInfo& v,
                                       rocksdb::IODebugContext* dbg) override {
      if (full_->load()) return fail();
      return FSWritableFileOwnerWrapper::PositionedAppend(d, off, o, v, dbg);
    }

   private:
    rocksdb::IOStatus fail() {
      failures_->fetch_add(1);
      return no_space();
    }
    Flag full_;
    Count failures_;
  };

  Flag full_ = std::make_shared<std::atomic<bool>>(false);
  Count failures_ = std::make_shared<std::atomic<uint64_t>>(0);
};

// An Env using `fs`; keep both alive while a store uses the Env.
inline std::unique_ptr<rocksdb::Env> make_env(const std::shared_ptr<rocksdb::FileSystem>& fs) {
  return rocksdb::NewCompositeEnv(fs);
}

}  // namespace sidetrace::buffer::testing

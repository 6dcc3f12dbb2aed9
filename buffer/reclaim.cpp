#include "buffer/reclaim.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>

#include "common/thread.h"

namespace sidetrace::buffer {

namespace {

bool deferred_kind(const std::string& name) {
  auto ends_with = [&](const char* s) {
    size_t n = std::strlen(s);
    return name.size() > n && name.compare(name.size() - n, n, s) == 0;
  };
  return ends_with(".log") || ends_with(".sst");
}

// Space a file holds: blocks preallocated past its end (RocksDB preallocates
// WAL files) count too.
uint64_t allocated_bytes(const struct stat& st) {
  uint64_t blocks = static_cast<uint64_t>(st.st_blocks) * 512;
  uint64_t size = static_cast<uint64_t>(st.st_size);
  return blocks > size ? blocks : size;
}

}  // namespace

ReclaimingFileSystem::ReclaimingFileSystem(const std::shared_ptr<rocksdb::FileSystem>& base,
                                           ReclaimOptions options)
    : FileSystemWrapper(base), opts_(std::move(options)) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(opts_.trash_dir, ec);
  if (ec) {
    spdlog::warn("buffer: cannot create {} ({}); deleted store files are freed at once",
                 opts_.trash_dir, ec.message());
  }
}

void ReclaimingFileSystem::start() {
  if (thread_.joinable()) return;
  // Left by an earlier run that stopped before reclaiming them (those moved
  // aside since construction are queued already).
  std::set<std::string> queued;
  {
    std::lock_guard lock(mu_);
    for (const Item& item : queue_)
      queued.insert(item.path);
  }
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(opts_.trash_dir, ec)) {
    std::string path = entry.path().string();
    if (entry.is_regular_file(ec) && !queued.count(path)) enqueue(std::move(path));
  }
  thread_ = std::thread([this] { run_thread("st-reclaim", [this] { run(); }); });
}

ReclaimingFileSystem::~ReclaimingFileSystem() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  // What is still waiting is freed at once: the store is closed.
  for (const Item& item : queue_)
    ::unlink(item.path.c_str());
}

rocksdb::IOStatus ReclaimingFileSystem::DeleteFile(const std::string& fname,
                                                   const rocksdb::IOOptions& options,
                                                   rocksdb::IODebugContext* dbg) {
  if (deferred_kind(fname)) {
    std::string to =
        (std::filesystem::path(opts_.trash_dir) / std::filesystem::path(fname).filename()).string();
    if (::rename(fname.c_str(), to.c_str()) == 0) {
      enqueue(std::move(to));
      return rocksdb::IOStatus::OK();
    }
    // Not there (the wrapped filesystem reports it), or cannot be moved:
    // deleted the usual way.
  }
  return target()->DeleteFile(fname, options, dbg);
}

void ReclaimingFileSystem::enqueue(std::string path) {
  struct stat st {};
  uint64_t bytes = ::stat(path.c_str(), &st) == 0 ? allocated_bytes(st) : 0;
  {
    std::lock_guard lock(mu_);
    queue_.push_back(Item{std::move(path), bytes});
    ++stats_.deferred_files;
    ++stats_.pending_files;
    stats_.pending_bytes += bytes;
  }
  cv_.notify_one();
}

ReclaimStats ReclaimingFileSystem::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

void ReclaimingFileSystem::run() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (stop_) return;
    Item item = queue_.front();
    lock.unlock();
    reclaim(item);
    lock.lock();
    queue_.pop_front();
    --stats_.pending_files;
    stats_.pending_bytes -= item.bytes;
    ++stats_.reclaimed_files;
    stats_.reclaimed_bytes += item.bytes;
  }
}

void ReclaimingFileSystem::reclaim(const Item& item) {
  int fd = ::open(item.path.c_str(), O_WRONLY | O_CLOEXEC);
  struct stat st {};
  // Another link to the file (a checkpoint, a backup) keeps its data: only
  // the name goes.
  if (fd < 0 || ::fstat(fd, &st) != 0 || st.st_nlink > 1) {
    if (fd < 0) {
      std::lock_guard lock(mu_);
      ++stats_.errors;
    } else {
      ::close(fd);
    }
    ::unlink(item.path.c_str());
    return;
  }
  // Blocks preallocated past the end would all be freed by the first step:
  // the end moves over them first (that frees nothing).
  uint64_t size = allocated_bytes(st);
  if (size > static_cast<uint64_t>(st.st_size)) {
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0) size = static_cast<uint64_t>(st.st_size);
  }
  const uint64_t step = opts_.step_bytes > 0 ? opts_.step_bytes : 1;
  while (size > 0) {
    size = size > step ? size - step : 0;
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0) break;
    if (size == 0 || opts_.pause.count() == 0) {
      std::lock_guard lock(mu_);
      ++stats_.steps;
      continue;
    }
    struct statvfs vfs {};
    bool low_space = ::fstatvfs(fd, &vfs) == 0 &&
                     static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize < opts_.low_space_bytes;
    std::unique_lock lock(mu_);
    ++stats_.steps;
    if (!low_space && stats_.pending_bytes <= opts_.hurry_bytes) {
      cv_.wait_for(lock, opts_.pause, [&] { return stop_; });
    }
  }
  ::close(fd);
  if (::unlink(item.path.c_str()) != 0 && errno != ENOENT) {
    std::lock_guard lock(mu_);
    ++stats_.errors;
  }
}

}  // namespace sidetrace::buffer

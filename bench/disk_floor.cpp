#include "bench/disk_floor.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "buffer/histogram.h"

namespace sidetrace::bench {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kJournalBytes = 64 << 20;
constexpr size_t kBgChunk = 1 << 20;
constexpr uint64_t kBgFileBytes = 64 << 20;
constexpr std::chrono::milliseconds kStopCheck{20};

void must(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "disk floor: %s: %s\n", what, std::strerror(errno));
  std::exit(1);
}

// Writes new files at `mib_s` until stopped, each 1 MiB written out at once
// (sync_file_range) and each finished file fsync'ed.
void background(const fs::path& dir, double mib_s, const std::atomic<bool>& stop) {
  std::string chunk(kBgChunk, '\0');
  std::mt19937_64 rng(7);
  for (size_t i = 0; i + 8 <= chunk.size(); i += 8) {
    uint64_t r = rng();
    std::memcpy(chunk.data() + i, &r, 8);
  }
  const auto per_chunk =
      std::chrono::duration<double>(static_cast<double>(kBgChunk) / (mib_s * 1024 * 1024));
  auto next = Clock::now();
  for (int n = 0; !stop.load(); ++n) {
    std::string path = (dir / ("bg-" + std::to_string(n))).string();
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    must(fd >= 0, "opening a background file");
    for (uint64_t off = 0; off < kBgFileBytes && !stop.load(); off += kBgChunk) {
      must(::pwrite(fd, chunk.data(), chunk.size(), static_cast<off_t>(off)) ==
               static_cast<ssize_t>(chunk.size()),
           "background write");
      ::sync_file_range(fd, static_cast<off_t>(off), kBgChunk, SYNC_FILE_RANGE_WRITE);
      next += std::chrono::duration_cast<Clock::duration>(per_chunk);
      // In steps, so that a slow rate (a chunk every few seconds) still stops
      // soon after the measurement ends.
      for (auto now = Clock::now(); now < next && !stop.load(); now = Clock::now())
        std::this_thread::sleep_for(std::min<Clock::duration>(next - now, kStopCheck));
    }
    ::fsync(fd);
    ::close(fd);
  }
}

}  // namespace

DiskFloor measure_disk_floor(const DiskFloorOptions& options) {
  fs::path dir = options.dir / ("sidetrace-disk-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::string journal = (dir / "journal").string();
  int fd = ::open(journal.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
  must(fd >= 0, "opening the journal");
  {
    std::string zeros(1 << 20, '\0');
    for (uint64_t off = 0; off < kJournalBytes; off += zeros.size()) {
      must(::pwrite(fd, zeros.data(), zeros.size(), static_cast<off_t>(off)) ==
               static_cast<ssize_t>(zeros.size()),
           "writing the journal");
    }
    must(::fsync(fd) == 0, "syncing the journal");
  }

  std::mutex mu;
  std::condition_variable cv;
  std::vector<Clock::time_point> arrived;
  std::atomic<bool> done{false};
  buffer::LatencyHistogram latency, sync_time;

  std::thread writer([&] {
    std::vector<Clock::time_point> group;
    std::string data;
    uint64_t off = 0;
    for (;;) {
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return !arrived.empty() || done.load(); });
        if (arrived.empty()) return;
        group.swap(arrived);
      }
      data.assign(group.size() * options.event_bytes, 'e');
      if (off + data.size() > kJournalBytes) off = 0;
      must(::pwrite(fd, data.data(), data.size(), static_cast<off_t>(off)) ==
               static_cast<ssize_t>(data.size()),
           "journal write");
      off += data.size();
      auto t0 = Clock::now();
      must(::fdatasync(fd) == 0, "fdatasync");
      auto now = Clock::now();
      sync_time.record(static_cast<uint64_t>((now - t0).count()));
      for (auto t : group)
        latency.record(static_cast<uint64_t>((now - t).count()));
      group.clear();
    }
  });

  std::atomic<bool> stop_bg{false};
  std::thread bg;
  if (options.background_mib_s > 0)
    bg = std::thread([&] { background(dir, options.background_mib_s, stop_bg); });

  auto start = Clock::now();
  const auto ticks = static_cast<uint64_t>(options.seconds * 1000);
  for (uint64_t tick = 0; tick < ticks; ++tick) {
    std::this_thread::sleep_until(start + std::chrono::milliseconds(tick));
    auto now = Clock::now();
    {
      std::lock_guard lock(mu);
      arrived.insert(arrived.end(), options.events_per_ms, now);
    }
    cv.notify_one();
  }
  {
    std::lock_guard lock(mu);
    done.store(true);
  }
  cv.notify_one();
  writer.join();
  stop_bg.store(true);
  if (bg.joinable()) bg.join();
  ::close(fd);
  fs::remove_all(dir);
  ::sync();  // the removed files' space is freed now, not in the next run

  DiskFloor f;
  f.p50_ns = latency.quantile_ns(0.5);
  f.p99_ns = latency.quantile_ns(0.99);
  f.fdatasync_p99_ns = sync_time.quantile_ns(0.99);
  f.fdatasync_max_ns = sync_time.quantile_ns(1.0);
  return f;
}

}  // namespace sidetrace::bench

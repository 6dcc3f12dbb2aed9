// The disk's own floor for receive->durable latency: the persist benchmark's
// steady load (50 events of ~500 bytes every 1 ms) written in group commits
// to a file whose blocks are already written (no metadata changes, so an
// fdatasync is the data and the drive's cache flush, nothing else), without
// RocksDB. Each run adds a background writer at a fixed rate, shaped like
// table-file writing (1 MiB writes handed to the kernel as they fill, a new
// file every 64 MiB, each file synced when done): what the store's flushes
// and compactions do next to its group commits. No store can do better on
// the same disk with the same background traffic.
//
// Environment: DISK_BENCH_DIR (default PERSIST_BENCH_DIR, then the system
// temp dir), DISK_BENCH_SECONDS (each run, default 10), DISK_BENCH_BG_MIB_S
// (comma-separated background rates, default 0,10,30).
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "buffer/histogram.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

constexpr size_t kEventBytes = 500;
constexpr uint64_t kPerTick = 50;  // every 1 ms: 50k events/s
constexpr uint64_t kJournalBytes = 64 << 20;
constexpr size_t kBgChunk = 1 << 20;
constexpr uint64_t kBgFileBytes = 64 << 20;

std::string bench_dir() {
  for (const char* v : {"DISK_BENCH_DIR", "PERSIST_BENCH_DIR"}) {
    if (const char* d = std::getenv(v); d && *d) return d;
  }
  return fs::temp_directory_path().string();
}

void must(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "disk_sync_bench: %s: %s\n", what, std::strerror(errno));
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
      std::this_thread::sleep_until(next);
    }
    ::fsync(fd);
    ::close(fd);
  }
}

void run(const fs::path& root, double bg_mib_s, double seconds) {
  fs::path dir = root / ("sidetrace-disk-" + std::to_string(::getpid()));
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
  sidetrace::buffer::LatencyHistogram latency, sync_time;

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
      data.assign(group.size() * kEventBytes, 'e');
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
  if (bg_mib_s > 0) bg = std::thread([&] { background(dir, bg_mib_s, stop_bg); });

  auto start = Clock::now();
  const auto ticks = static_cast<uint64_t>(seconds * 1000);
  for (uint64_t tick = 0; tick < ticks; ++tick) {
    std::this_thread::sleep_until(start + std::chrono::milliseconds(tick));
    auto now = Clock::now();
    {
      std::lock_guard lock(mu);
      arrived.insert(arrived.end(), kPerTick, now);
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

  std::printf(
      "{\"bench\":\"disk_sync\",\"offered_per_s\":%llu,\"background_mib_s\":%.0f,"
      "\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"fdatasync_p99_ms\":%.3f,\"fdatasync_max_ms\":%.3f}\n",
      static_cast<unsigned long long>(kPerTick * 1000), bg_mib_s,
      static_cast<double>(latency.quantile_ns(0.5)) / 1e6,
      static_cast<double>(latency.quantile_ns(0.99)) / 1e6,
      static_cast<double>(sync_time.quantile_ns(0.99)) / 1e6,
      static_cast<double>(sync_time.quantile_ns(1.0)) / 1e6);
  std::fflush(stdout);
}

}  // namespace

int main() {
  const char* s = std::getenv("DISK_BENCH_SECONDS");
  double seconds = s ? std::strtod(s, nullptr) : 10.0;
  const char* rates = std::getenv("DISK_BENCH_BG_MIB_S");
  std::stringstream list(rates && *rates ? rates : "0,10,30");
  for (std::string r; std::getline(list, r, ',');)
    run(bench_dir(), std::strtod(r.c_str(), nullptr), seconds);
  return 0;
}

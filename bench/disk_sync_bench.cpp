// The disk's own floor for receive->durable latency: the persist benchmark's
// steady load (50 events of ~500 bytes every 1 ms) in group commits to a plain
// file, beside a background writer at each given rate (bench/disk_floor.h has
// the method). No store can do better on the same disk with the same
// background traffic. persist_bench measures the same floor after its own
// fsync latency run, beside the store's own background write rate.
//
// Environment: DISK_BENCH_DIR (default PERSIST_BENCH_DIR, then the system
// temp dir), DISK_BENCH_SECONDS (each run, default 10), DISK_BENCH_BG_MIB_S
// (comma-separated background rates, default 0,10,30).
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>

#include "bench/disk_floor.h"

namespace fs = std::filesystem;

namespace {

std::string bench_dir() {
  for (const char* v : {"DISK_BENCH_DIR", "PERSIST_BENCH_DIR"}) {
    if (const char* d = std::getenv(v); d && *d) return d;
  }
  return fs::temp_directory_path().string();
}

void run(const fs::path& root, double bg_mib_s, double seconds) {
  sidetrace::bench::DiskFloorOptions o;
  o.dir = root;
  o.background_mib_s = bg_mib_s;
  o.seconds = seconds;
  sidetrace::bench::DiskFloor f = sidetrace::bench::measure_disk_floor(o);
  std::printf(
      "{\"bench\":\"disk_sync\",\"offered_per_s\":%llu,\"background_mib_s\":%.0f,"
      "\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"fdatasync_p99_ms\":%.3f,\"fdatasync_max_ms\":%.3f}\n",
      static_cast<unsigned long long>(o.events_per_ms * 1000), bg_mib_s,
      static_cast<double>(f.p50_ns) / 1e6, static_cast<double>(f.p99_ns) / 1e6,
      static_cast<double>(f.fdatasync_p99_ns) / 1e6, static_cast<double>(f.fdatasync_max_ns) / 1e6);
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

// The disk's own floor for receive->durable latency, as disk_sync_bench and
// persist_bench measure it.
//
// A steady load (`events_per_ms` events of `event_bytes` every 1 ms) is
// written in group commits to a file whose blocks are already written (no
// metadata changes, so an fdatasync is the data and the drive's cache flush,
// nothing else), without RocksDB: one thread appends whatever has arrived and
// fdatasyncs it, and each event's latency runs from its arrival to the end of
// the sync that covered it. Beside it, an optional background writer at a
// fixed rate, shaped like table-file writing (1 MiB writes handed to the
// kernel as they fill, a new file every 64 MiB, each file synced when done):
// what a store's flushes and compactions do next to its group commits. No
// store can do better on the same disk with the same background traffic.
//
// Thread safety: measure_disk_floor() shares no state and may be called from
// any thread, but measurements running side by side would measure each other:
// run one at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>

namespace sidetrace::bench {

struct DiskFloorOptions {
  // The measurement works in a fresh subdirectory of `dir` (on the
  // filesystem to measure), removed when done.
  std::filesystem::path dir;
  uint64_t events_per_ms = 50;
  size_t event_bytes = 500;
  // 0 = no background writer.
  double background_mib_s = 0;
  double seconds = 10;
};

struct DiskFloor {
  uint64_t p50_ns = 0;  // receive->durable of each event
  uint64_t p99_ns = 0;
  uint64_t fdatasync_p99_ns = 0;  // the syncs alone
  uint64_t fdatasync_max_ns = 0;
};

// Runs one measurement for `seconds` and returns it. An I/O error ends the
// process with a message (it is a benchmark's helper). Syncs the filesystem
// after removing its files, so that their freed space does not weigh on what
// is measured next.
DiskFloor measure_disk_floor(const DiskFloorOptions& options);

}  // namespace sidetrace::bench

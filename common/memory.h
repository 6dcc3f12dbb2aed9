// A bound on the freed memory the allocator keeps for reuse.
//
// The agent's jemalloc (common/allocator.cpp) returns freed pages to the
// kernel about 0.3 s after they were last used: pages freed between two
// rounds of work are reused as they are, not faulted in and zeroed again
// (10-14 us a page on a virtual machine). Under a flood, though, a burst of
// freed pages can pile up meanwhile. MemoryTrim bounds that pile: at most
// once per `interval` it reads how much freed memory the allocator holds, and
// above `limit_bytes` it returns every unused page at once. Memory in use is
// not its business (the agent's queues and caches have bounds of their own),
// so a large working set does not make it purge over and over.
//
// Without jemalloc (the sanitizer builds) it does nothing: `mallctl` is then
// absent (a weak reference, null).
//
// Thread safety: poll() from one thread at a time; the rest from any.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <thread>

#include "common/thread.h"

extern "C" int mallctl(const char* name, void* oldp, size_t* oldlenp, void* newp, size_t newlen)
    __attribute__((weak));

namespace sidetrace {

// Blocks of exactly this size, allocated with new[], come from an allocator
// arena that keeps their freed pages for reuse longer than the rest
// (common/allocator.cpp): the store's memtables take their memory in such
// blocks (buffer/store.cpp).
inline constexpr size_t kKeptBlockBytes = 512 << 10;

class MemoryTrim {
 public:
  // limit_bytes 0: never trims.
  MemoryTrim(uint64_t limit_bytes, std::chrono::milliseconds interval)
      : limit_(limit_bytes),
        interval_ns_(static_cast<uint64_t>(std::chrono::nanoseconds(interval).count())) {}

  // Cheap enough to call after every unit of work: it looks at the allocator
  // only once `interval` has passed since the last look (`now_ns` is any
  // monotonic clock). Returns whether it trimmed.
  bool poll(uint64_t now_ns) {
    if (limit_ == 0 || mallctl == nullptr || now_ns < next_ns_) return false;
    next_ns_ = now_ns + interval_ns_;
    if (freed_bytes() <= limit_) return false;
    // MALLCTL_ARENAS_ALL: every arena.
    if (mallctl("arena.4096.purge", nullptr, nullptr, nullptr, 0) != 0) return false;
    trims_.fetch_add(1, std::memory_order_relaxed);
    return true;
  }

  // What the allocator holds resident now: in use, and freed but not yet
  // returned (0 without jemalloc's statistics).
  static uint64_t resident_bytes() {
    size_t resident = 0;
    return read_stat("stats.resident", &resident) ? resident : 0;
  }

  // Of that, the freed pages not yet returned to the kernel.
  static uint64_t freed_bytes() {
    size_t pages = 0, page = 0;
    // MALLCTL_ARENAS_ALL (4096): every arena, merged.
    if (!read_stat("stats.arenas.4096.pdirty", &pages)) return 0;
    size_t len = sizeof page;
    if (mallctl("arenas.page", &page, &len, nullptr, 0) != 0) return 0;
    return static_cast<uint64_t>(pages) * page;
  }

  uint64_t trims() const { return trims_.load(std::memory_order_relaxed); }

 private:
  static bool read_stat(const char* name, size_t* value) {
    if (mallctl == nullptr) return false;
    // The statistics are a snapshot taken at each new epoch.
    uint64_t epoch = 1;
    size_t len = sizeof epoch;
    if (mallctl("epoch", &epoch, &len, &epoch, len) != 0) return false;
    len = sizeof *value;
    return mallctl(name, value, &len, nullptr, 0) == 0;
  }

  const uint64_t limit_;
  const uint64_t interval_ns_;
  uint64_t next_ns_ = 0;
  std::atomic<uint64_t> trims_{0};
};

// MemoryTrim on a thread of its own (st-memory), so that a thread that
// stalls (the writer waiting for the store) does not stop it. Freed pages
// pile up only as fast as memory is used and freed, which goes with the work
// the agent does: poke(bytes) (cheap, from any thread; the writer pokes after
// each round of work with the bytes it took) counts that work, and once
// `look_bytes` of it has been done since the last look, wakes the thread. It
// then looks (at most once per `interval`), and while a look finds a pile to
// return, looks again after `interval`, so that a flood is followed closely;
// otherwise it sleeps until enough work has been done again. An everyday load
// wakes it every few seconds, and idle it does not wake.
// Without jemalloc it starts no thread.
class MemoryTrimThread {
 public:
  MemoryTrimThread(uint64_t limit_bytes, std::chrono::milliseconds interval, uint64_t look_bytes)
      : trim_(limit_bytes, interval), interval_(interval), look_bytes_(look_bytes) {
    if (mallctl != nullptr && limit_bytes > 0) {
      thread_ = std::thread([this] { run_thread("st-memory", [this] { run(); }); });
    }
  }
  ~MemoryTrimThread() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    if (thread_.joinable()) thread_.join();
  }
  MemoryTrimThread(const MemoryTrimThread&) = delete;
  MemoryTrimThread& operator=(const MemoryTrimThread&) = delete;

  void poke(uint64_t bytes) {
    if (work_.fetch_add(bytes, std::memory_order_relaxed) + bytes < look_bytes_) return;
    if (active_.exchange(true, std::memory_order_relaxed)) return;
    std::lock_guard lock(mu_);
    cv_.notify_one();
  }

  uint64_t looks() const { return looks_.load(std::memory_order_relaxed); }
  uint64_t trims() const { return trim_.trims(); }

 private:
  void run() {
    std::unique_lock lock(mu_);
    while (!stop_) {
      cv_.wait(lock, [this] { return stop_ || active_.load(std::memory_order_relaxed); });
      while (!stop_) {
        lock.unlock();
        work_.store(0, std::memory_order_relaxed);
        looks_.fetch_add(1, std::memory_order_relaxed);
        const bool trimmed = trim_.poll(static_cast<uint64_t>(
            std::chrono::steady_clock::now().time_since_epoch() / std::chrono::nanoseconds(1)));
        lock.lock();
        if (!trimmed) {
          // A poke after enough work wakes it again.
          active_.store(false, std::memory_order_relaxed);
          break;
        }
        cv_.wait_for(lock, interval_, [this] { return stop_; });
      }
    }
  }

  MemoryTrim trim_;
  const std::chrono::milliseconds interval_;
  const uint64_t look_bytes_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::atomic<bool> active_{false};
  std::atomic<uint64_t> work_{0};
  std::atomic<uint64_t> looks_{0};
  std::thread thread_;
};

}  // namespace sidetrace

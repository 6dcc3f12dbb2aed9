// The agent's allocator settings. The agent and the benchmarks link
// jemalloc (common/CMakeLists.txt): with glibc's malloc, the receive, store and
// assembly threads contend on arenas and fragment them, and the agent spent a
// third more CPU per event. jemalloc reads the settings below at start-up;
// MALLOC_CONF in the environment overrides them.
//
//   narenas:2             one arena per core of a small sidecar, not 4 x cores;
//   background_thread     unused pages are returned to the kernel by jemalloc's
//                         own thread, not on the agent's receive path;
//   dirty_decay_ms:300    freed pages go back about 0.3 s after their last
//   muzzy_decay_ms:0      use. Pages freed between two rounds of work are
//                         reused as they are; returned ones are faulted in and
//                         zeroed again in the next round (10-14 us a page on a
//                         virtual machine). Against 100 ms, 1000 ms cost 28-32%
//                         less CPU per message at 2,000 and 20,000 msg/s
//                         (bench/footprint.py), 300 ms 5-10% more than 1000;
//                         but under a UDP flood 1000 ms let RSS past the 128
//                         MiB bound (tests/system/test_overload.py) in 3 runs
//                         of 6, with or without the bound on freed pages the
//                         agent keeps besides (common/memory.h), where 300 ms
//                         peaked at 63-70 MiB.
//   tcache_max:4096       threads cache small objects only; the large buffers
//                         (batches, request bodies) go back to the arena.
//
// Blocks of kKeptBlockBytes (common/memory.h: the store's memtable blocks) come
// from an arena of their own that keeps freed pages kKeptDecayMs. A memtable
// lives seconds, so with the 0.3 s above the pages of the one flushed went
// back to the kernel and the next one faulted all of its pages in again: 62%
// of the agent's page faults at 2,000 msg/s. Kept, they are the next
// memtable's (a third fewer page faults at 2,000 msg/s, half at 20,000, for
// 1-1.5 MiB more peak RSS: docs/benchmarks.md, the fifteenth round); held
// beyond the bound on freed memory (common/memory.h), they go back with the
// rest.
#include <jemalloc/jemalloc.h>

#include <cstdio>
#include <new>

#include "common/memory.h"

extern "C" {
// NOLINTNEXTLINE: the name is jemalloc's.
const char* malloc_conf =
    "narenas:2,background_thread:true,dirty_decay_ms:300,muzzy_decay_ms:0,tcache_max:4096";
}

namespace {

constexpr ssize_t kKeptDecayMs = 10000;

// The kept blocks' arena, made at the first of them; 0 when it cannot be.
unsigned kept_arena() {
  static const unsigned arena = [] {
    unsigned a = 0;
    size_t len = sizeof a;
    if (mallctl("arenas.create", &a, &len, nullptr, 0) != 0) return 0u;
    char name[48];
    std::snprintf(name, sizeof name, "arena.%u.dirty_decay_ms", a);
    ssize_t decay = kKeptDecayMs;
    if (mallctl(name, nullptr, nullptr, &decay, sizeof decay) != 0) return 0u;
    return a;
  }();
  return arena;
}

}  // namespace

void* operator new[](std::size_t bytes) {
  if (bytes == sidetrace::kKeptBlockBytes) {
    if (const unsigned arena = kept_arena(); arena != 0) {
      if (void* p = mallocx(bytes, MALLOCX_ARENA(arena) | MALLOCX_TCACHE_NONE)) return p;
      throw std::bad_alloc();
    }
  }
  return ::operator new(bytes);
}

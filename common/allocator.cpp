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
extern "C" {
// NOLINTNEXTLINE: the name is jemalloc's.
const char* malloc_conf =
    "narenas:2,background_thread:true,dirty_decay_ms:300,muzzy_decay_ms:0,tcache_max:4096";
}

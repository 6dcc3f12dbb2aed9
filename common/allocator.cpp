// The agent's allocator settings. The agent and the benchmarks link
// jemalloc (common/CMakeLists.txt): with glibc's malloc, the receive, store and
// assembly threads contend on arenas and fragment them, and the agent spent a
// third more CPU per event. jemalloc reads the settings below at start-up;
// MALLOC_CONF in the environment overrides them.
//
//   narenas:2             one arena per core of a small sidecar, not 4 x cores;
//   background_thread     unused pages are returned to the kernel by jemalloc's
//                         own thread, not on the agent's receive path;
//   dirty_decay_ms:100    freed pages go back within a tenth of a second, so
//   muzzy_decay_ms:0      that RSS follows the live data, not its recent peak.
//                         Pages returned between two rounds of work are faulted
//                         in and zeroed again in the next one (10-14 us a page on
//                         a virtual machine): 1000 ms cost 12-27% less CPU per
//                         message at 2,000 and 20,000 msg/s (bench/footprint.py),
//                         but under a flood freed pages piled up to 135-150 MiB
//                         of RSS in a third of the runs, past the 128 MiB bound
//                         (tests/system/test_overload.py), against 62-68 MiB.
//   tcache_max:4096       threads cache small objects only; the large buffers
//                         (batches, request bodies) go back to the arena.
extern "C" {
// NOLINTNEXTLINE: the name is jemalloc's.
const char* malloc_conf =
    "narenas:2,background_thread:true,dirty_decay_ms:100,muzzy_decay_ms:0,tcache_max:4096";
}

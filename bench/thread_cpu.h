// The calling thread's CPU time, for benchmarks that report CPU per unit of
// work.
#pragma once

#include <time.h>

namespace sidetrace::bench {

// Seconds of CPU the calling thread has used.
inline double thread_cpu_s() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

}  // namespace sidetrace::bench

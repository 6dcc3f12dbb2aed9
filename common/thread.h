// Per-thread settings of the agent's own threads.
#pragma once

#include <pthread.h>
#include <sys/resource.h>

#include <cerrno>
#include <string>
#include <string_view>

namespace sidetrace {

// Names the calling thread, as `top -H`, `ps -L`, perf and gdb show it.
// Linux keeps at most 15 characters; longer names are cut.
inline void set_thread_name(std::string_view name) {
  std::string n(name.substr(0, 15));
  pthread_setname_np(pthread_self(), n.c_str());
}

// Lowers the calling thread's CPU priority by `steps` nice levels (Linux keeps
// a nice value per thread; 19 is the lowest). It matters only while the CPU is
// short: then the scheduler gives the thread a smaller share. Lowering needs
// no privilege. False when the kernel refused.
inline bool lower_thread_priority(int steps) {
  if (steps <= 0) return true;
  errno = 0;
  int now = getpriority(PRIO_PROCESS, 0);  // 0: the calling thread
  if (now == -1 && errno != 0) return false;
  int to = now + steps > 19 ? 19 : now + steps;
  return setpriority(PRIO_PROCESS, 0, to) == 0;
}

}  // namespace sidetrace

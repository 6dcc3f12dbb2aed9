// Per-thread settings of the agent's own threads.
#pragma once

#include <pthread.h>
#include <sys/resource.h>

#include <spdlog/spdlog.h>

#include <atomic>
#include <cerrno>
#include <exception>
#include <mutex>
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

// What ended an agent thread by throwing. A stage whose thread has ended
// cannot go on: the agent's health check reports the first such failure
// (/healthz answers 503) and the systemd watchdog stops being pinged, so
// that the service is restarted.
class ThreadFailures {
 public:
  static ThreadFailures& global() {
    static ThreadFailures f;
    return f;
  }
  void record(std::string_view thread, std::string_view what) {
    std::lock_guard lock(mu_);
    if (first_.empty()) first_ = std::string(thread) + ": " + std::string(what);
    count_.fetch_add(1, std::memory_order_relaxed);
  }
  // A failure the thread survived (an event loop that runs on after a
  // handler threw).
  void record_survived() { survived_.fetch_add(1, std::memory_order_relaxed); }
  uint64_t survived() const { return survived_.load(std::memory_order_relaxed); }
  // "" while no thread has failed.
  std::string first() const {
    std::lock_guard lock(mu_);
    return first_;
  }
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  // Forgets every failure (for tests, which share the process).
  void clear() {
    std::lock_guard lock(mu_);
    first_.clear();
    count_ = 0;
    survived_ = 0;
  }

 private:
  mutable std::mutex mu_;
  std::string first_;
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> survived_{0};
};

// The body of an agent thread: names the thread and runs `body`; what it
// throws is logged and recorded in ThreadFailures instead of terminating the
// process (the thread then ends).
template <typename F>
void run_thread(std::string_view name, F&& body) noexcept {
  set_thread_name(name);
  std::string what;
  try {
    body();
    return;
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
    what = "an exception that is not a std::exception";
  }
  try {
    spdlog::critical("thread {} failed and has stopped: {}", name, what);
  } catch (...) {
  }
  ThreadFailures::global().record(name, what);
}

}  // namespace sidetrace

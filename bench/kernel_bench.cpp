// What crossing into the kernel costs on this machine: a system call, a page
// fault on fresh memory, and a wake-up of a sleeping thread. The agent pays
// these per message (bench/footprint.py reports its page faults and wake-ups
// per message), and on a virtual machine each can cost ten times what it
// does on bare metal: this puts the footprint's figures in proportion.
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>

namespace {

// Seconds of CPU the whole process has used.
double process_cpu_s() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// CPU per call of the cheapest system call.
double syscall_us() {
  constexpr int kCalls = 200000;
  const double t0 = process_cpu_s();
  for (int i = 0; i < kCalls; ++i)
    syscall(SYS_getppid);
  return (process_cpu_s() - t0) / kCalls * 1e6;
}

// CPU per page of writing into fresh anonymous memory: one fault per page, or
// (`populate`) the pages mapped in one call before they are written.
double fresh_page_us(bool populate) {
  constexpr size_t kBytes = 64 << 20, kPage = 4096;
  const double t0 = process_cpu_s();
  void* m = mmap(nullptr, kBytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | (populate ? MAP_POPULATE : 0), -1, 0);
  if (m == MAP_FAILED) return -1;
  auto* p = static_cast<volatile char*>(m);
  for (size_t i = 0; i < kBytes; i += kPage)
    p[i] = 1;
  const double cpu = process_cpu_s() - t0;
  munmap(m, kBytes);
  return cpu / (kBytes / kPage) * 1e6;
}

// CPU per wake-up: two threads take turns through a condition variable, so
// that each turn puts one to sleep and wakes the other.
double wake_us() {
  constexpr int kTurns = 20000;
  std::mutex mu;
  std::condition_variable cv;
  int turn = 0;
  const double t0 = process_cpu_s();
  std::thread other([&] {
    for (int i = 0; i < kTurns; ++i) {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return turn == 1; });
      turn = 0;
      cv.notify_all();
    }
  });
  for (int i = 0; i < kTurns; ++i) {
    std::unique_lock lock(mu);
    turn = 1;
    cv.notify_all();
    cv.wait(lock, [&] { return turn == 0; });
  }
  other.join();
  return (process_cpu_s() - t0) / (2.0 * kTurns) * 1e6;
}

}  // namespace

int main() {
  std::printf(
      "{\"bench\":\"kernel\",\"syscall_us\":%.3f,\"page_fault_us\":%.3f,"
      "\"populated_page_us\":%.3f,\"wake_us\":%.3f}\n",
      syscall_us(), fresh_page_us(false), fresh_page_us(true), wake_us());
  return 0;
}

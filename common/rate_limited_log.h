// Logging that cannot flood: at most `burst` lines per `period`; the lines held
// back are counted and reported with the next line that gets through.
//
// Thread safety: every method may be called from any thread.
#pragma once

#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string_view>

#include "common/clock.h"

namespace sidetrace {

class RateLimitedLog {
 public:
  explicit RateLimitedLog(uint32_t burst = 10,
                          std::chrono::nanoseconds period = std::chrono::seconds(10),
                          const Clock& clock = system_clock())
      : burst_(burst), period_ns_(static_cast<uint64_t>(period.count())), clock_(clock) {}

  // Logs `msg` at `level` unless the budget for this period is spent.
  // Returns whether it was logged.
  bool log(spdlog::level::level_enum level, std::string_view msg) {
    uint64_t suppressed = 0;
    {
      std::lock_guard lock(mu_);
      uint64_t now = clock_.mono_ns();
      if (now - window_start_ >= period_ns_ || window_start_ == 0) {
        window_start_ = now;
        used_ = 0;
      }
      if (used_ >= burst_) {
        ++suppressed_;
        return false;
      }
      ++used_;
      suppressed = suppressed_;
      suppressed_ = 0;
    }
    if (suppressed > 0) {
      spdlog::log(level, "{} ({} similar messages suppressed)", msg, suppressed);
    } else {
      spdlog::log(level, "{}", msg);
    }
    return true;
  }

 private:
  const uint32_t burst_;
  const uint64_t period_ns_;
  const Clock& clock_;
  std::mutex mu_;
  uint64_t window_start_ = 0;
  uint32_t used_ = 0;
  uint64_t suppressed_ = 0;
};

}  // namespace sidetrace

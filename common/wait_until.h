// How tests wait: they poll a condition until it holds or a deadline passes,
// and never sleep for an outcome. Test-only.
#pragma once

#include <chrono>
#include <thread>

namespace sidetrace {

// Polls `cond` every `interval` until it holds or `limit` has passed; returns
// whether it held.
template <typename F>
bool wait_until(F&& cond, std::chrono::milliseconds limit = std::chrono::seconds(15),
                std::chrono::microseconds interval = std::chrono::microseconds(500)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!cond()) {
    if (std::chrono::steady_clock::now() >= deadline) return cond();
    std::this_thread::sleep_for(interval);  // a poll interval, not a wait for an outcome
  }
  return true;
}

}  // namespace sidetrace

// A lock-free latency histogram with log-linear buckets (8 sub-buckets per
// power of two: relative error <= 12.5%), from 1 us to about 1 hour.
//
// Thread safety: record() and every reader may run concurrently from any
// thread; a reading is a consistent-enough snapshot for metrics.
#pragma once

#include <array>
#include <atomic>
#include <bit>
#include <cstdint>

namespace sidetrace::buffer {

class LatencyHistogram {
 public:
  static constexpr int kSub = 8;
  static constexpr int kBuckets = 32 * kSub;

  void record(uint64_t ns) {
    counts_[bucket(ns)].fetch_add(1, std::memory_order_relaxed);
    total_.fetch_add(1, std::memory_order_relaxed);
  }

  uint64_t count() const { return total_.load(std::memory_order_relaxed); }

  // The upper edge, in ns, of the bucket holding quantile `q` (0..1); 0 when empty.
  uint64_t quantile_ns(double q) const {
    uint64_t n = count();
    if (n == 0) return 0;
    uint64_t rank = static_cast<uint64_t>(q * static_cast<double>(n - 1)) + 1;
    uint64_t seen = 0;
    for (int i = 0; i < kBuckets; ++i) {
      seen += counts_[i].load(std::memory_order_relaxed);
      if (seen >= rank) return upper_ns(i);
    }
    return upper_ns(kBuckets - 1);
  }

  void reset() {
    for (auto& c : counts_)
      c.store(0, std::memory_order_relaxed);
    total_.store(0, std::memory_order_relaxed);
  }

 private:
  // Values are kept in microseconds: bucket = 8 * log2(us) + the top 3 bits
  // below the leading one.
  static int bucket(uint64_t ns) {
    uint64_t us = ns / 1000;
    if (us < kSub) return static_cast<int>(us);
    int msb = 63 - std::countl_zero(us);
    int sub = static_cast<int>((us >> (msb - 3)) & (kSub - 1));
    int b = (msb - 2) * kSub + sub;
    return b < kBuckets ? b : kBuckets - 1;
  }
  static uint64_t upper_ns(int b) {
    if (b < kSub) return static_cast<uint64_t>(b + 1) * 1000;
    int msb = b / kSub + 2;
    uint64_t sub = static_cast<uint64_t>(b % kSub);
    uint64_t lower = (uint64_t{1} << msb) + (sub << (msb - 3));
    return (lower + (uint64_t{1} << (msb - 3))) * 1000;
  }

  std::array<std::atomic<uint64_t>, kBuckets> counts_{};
  std::atomic<uint64_t> total_{0};
};

}  // namespace sidetrace::buffer

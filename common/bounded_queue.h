// A bounded multi-producer queue whose bound is a total weight (usually bytes),
// so that memory stays bounded whatever the item sizes.
//
// Producers never block: try_push() either accepts the item or refuses it and
// the caller counts the refusal (drop-newest) or retries later (back-pressure).
// Consumers take everything queued at once with pop_all(), or the oldest items
// up to a weight with pop_upto(); both wait up to a timeout. close() wakes every waiter; after it,
// try_push() refuses and pop_all() drains what is left, then returns false.
//
// A consumer that works in rounds waits with wait_for_weight(): it sleeps
// through arrivals until the queued weight reaches the queue's wake weight
// (or its timeout, close() or notify()), so that a round costs one wake-up,
// not one per item. Producers wake a consumer waiting for items (or for the
// first one) only when the queue was empty or when the weight reaches the
// wake weight (0, the default, wakes it for every item), and a consumer
// waiting for weight only when the weight reaches the wake weight; nobody is
// woken when nobody waits.
//
// Thread safety: every method may be called from any thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <utility>
#include <vector>

namespace sidetrace {

template <typename T>
class BoundedQueue {
 public:
  explicit BoundedQueue(size_t max_weight, size_t wake_weight = 0)
      : max_weight_(max_weight), wake_weight_(wake_weight) {}

  BoundedQueue(const BoundedQueue&) = delete;
  BoundedQueue& operator=(const BoundedQueue&) = delete;

  // Queues `item` of the given weight. Returns false, leaving `item` untouched,
  // when the queue is closed or the item would take the total past the bound.
  // An item heavier than the whole bound is accepted only into an empty queue,
  // so that nothing is refused forever.
  bool try_push(T& item, size_t weight) {
    bool wake = false, all = false;
    {
      std::lock_guard lock(mu_);
      if (closed_) return false;
      if (weight_ + weight > max_weight_ && !items_.empty()) return false;
      items_.emplace_back(std::move(item), weight);
      weight_ += weight;
      const bool heavy = weight_ >= wake_weight_;
      const bool wake_items = item_waiters_ > 0 && (items_.size() == 1 || heavy);
      const bool wake_weight = weight_waiters_ > 0 && heavy;
      wake = wake_items || wake_weight;
      // Both kinds waiting: notify_one could pick the one that sleeps on.
      all = item_waiters_ > 0 && weight_waiters_ > 0;
      if (wake) ++notifications_;
    }
    if (wake) {
      if (all) {
        cv_.notify_all();
      } else {
        cv_.notify_one();
      }
    }
    return true;
  }
  bool try_push(T&& item, size_t weight) { return try_push(item, weight); }

  // Moves every queued item into `out` (appending), waiting up to `timeout` for
  // the first one. Returns false once the queue is closed and empty.
  template <typename Rep, typename Period>
  bool pop_all(std::vector<T>& out, std::chrono::duration<Rep, Period> timeout) {
    std::unique_lock lock(mu_);
    wait_for_items(lock, timeout);
    if (items_.empty()) return !closed_;
    for (auto& [item, w] : items_)
      out.push_back(std::move(item));
    items_.clear();
    weight_ = 0;
    return true;
  }

  // Moves the oldest items into `out` (appending) until their weights reach
  // `max_weight` (at least one item), waiting up to `timeout` for the first.
  // What is left stays queued and counts against the bound. Returns false
  // once the queue is closed and empty.
  template <typename Rep, typename Period>
  bool pop_upto(std::vector<T>& out, size_t max_weight,
                std::chrono::duration<Rep, Period> timeout) {
    std::unique_lock lock(mu_);
    wait_for_items(lock, timeout);
    if (items_.empty()) return !closed_;
    size_t taken = 0;
    while (!items_.empty() && (taken == 0 || taken < max_weight)) {
      auto& [item, w] = items_.front();
      out.push_back(std::move(item));
      taken += w;
      weight_ -= w;
      items_.pop_front();
    }
    return true;
  }

  // Waits up to `timeout` until an item is queued and the queued weight
  // reaches `min_weight`, the queue is closed, or notify() is called; takes
  // nothing. Producers wake the waiter at the first item and at the wake
  // weight, so `min_weight` is one of those two (0 or wake_weight()).
  template <typename Rep, typename Period>
  void wait_for_weight(size_t min_weight, std::chrono::duration<Rep, Period> timeout) {
    std::unique_lock lock(mu_);
    const uint64_t notified = notified_;
    // Waiting for the first item is waiting for items; producers count it so.
    size_t& waiters = min_weight == 0 ? item_waiters_ : weight_waiters_;
    ++waiters;
    cv_.wait_for(lock, timeout, [&] {
      return closed_ || notified_ != notified || (!items_.empty() && weight_ >= min_weight);
    });
    --waiters;
  }

  // Ends every wait_for_weight() in progress (for a consumer that stops).
  void notify() {
    {
      std::lock_guard lock(mu_);
      ++notified_;
    }
    cv_.notify_all();
  }

  void close() {
    {
      std::lock_guard lock(mu_);
      closed_ = true;
    }
    cv_.notify_all();
  }

  size_t weight() const {
    std::lock_guard lock(mu_);
    return weight_;
  }
  size_t size() const {
    std::lock_guard lock(mu_);
    return items_.size();
  }
  size_t max_weight() const { return max_weight_; }
  size_t wake_weight() const { return wake_weight_; }

  // Diagnostics: consumers waiting now, and how many times producers have
  // woken one.
  size_t waiting() const {
    std::lock_guard lock(mu_);
    return item_waiters_ + weight_waiters_;
  }
  uint64_t notifications() const {
    std::lock_guard lock(mu_);
    return notifications_;
  }

 private:
  template <typename Rep, typename Period>
  void wait_for_items(std::unique_lock<std::mutex>& lock,
                      std::chrono::duration<Rep, Period> timeout) {
    ++item_waiters_;
    cv_.wait_for(lock, timeout, [&] { return closed_ || !items_.empty(); });
    --item_waiters_;
  }

  const size_t max_weight_;
  const size_t wake_weight_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<T, size_t>> items_;
  size_t weight_ = 0;
  uint64_t notified_ = 0;
  size_t item_waiters_ = 0;    // consumers in pop_all(), pop_upto(), wait_for_weight(0, ...)
  size_t weight_waiters_ = 0;  // consumers in wait_for_weight() for a weight
  uint64_t notifications_ = 0;
  bool closed_ = false;
};

}  // namespace sidetrace

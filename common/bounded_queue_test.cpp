#include "common/bounded_queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>

namespace sidetrace {
namespace {

TEST(BoundedQueue, RefusesPastTheBoundAndKeepsTheItem) {
  BoundedQueue<std::string> q(10);
  std::string a = "aaaa", b = "bbbbbbb";
  EXPECT_TRUE(q.try_push(a, a.size()));
  EXPECT_FALSE(q.try_push(b, b.size()));
  EXPECT_EQ(b, "bbbbbbb");  // a refused item is not moved from
  EXPECT_EQ(q.weight(), 4u);
}

TEST(BoundedQueue, PopUptoTakesTheOldestUpToAWeightAndLeavesTheRest) {
  BoundedQueue<int> q(100);
  for (int i = 1; i <= 5; ++i)
    ASSERT_TRUE(q.try_push(i, 10));
  std::vector<int> out;
  ASSERT_TRUE(q.pop_upto(out, 25, std::chrono::milliseconds(0)));
  EXPECT_EQ(out, (std::vector<int>{1, 2, 3}));  // 30 >= 25: the third one ends it
  EXPECT_EQ(q.weight(), 20u);                   // the rest still counts
  out.clear();
  ASSERT_TRUE(q.pop_upto(out, 1, std::chrono::milliseconds(0)));
  EXPECT_EQ(out, std::vector<int>{4});  // at least one, even past the weight
  q.close();
  out.clear();
  ASSERT_TRUE(q.pop_upto(out, 1000, std::chrono::milliseconds(0)));
  EXPECT_EQ(out, std::vector<int>{5});  // drains after close
  EXPECT_FALSE(q.pop_upto(out, 1000, std::chrono::milliseconds(0)));
}

TEST(BoundedQueue, AcceptsOversizedItemOnlyWhenEmpty) {
  BoundedQueue<int> q(10);
  EXPECT_TRUE(q.try_push(1, 100));
  EXPECT_FALSE(q.try_push(2, 1));
  std::vector<int> out;
  ASSERT_TRUE(q.pop_all(out, std::chrono::milliseconds(0)));
  EXPECT_EQ(out, std::vector<int>{1});
  EXPECT_EQ(q.weight(), 0u);
  EXPECT_TRUE(q.try_push(2, 1));
}

TEST(BoundedQueue, PopAllTimesOutEmptyAndDrainsAfterClose) {
  BoundedQueue<int> q(10);
  std::vector<int> out;
  EXPECT_TRUE(q.pop_all(out, std::chrono::milliseconds(1)));
  EXPECT_TRUE(out.empty());
  EXPECT_TRUE(q.try_push(7, 1));
  q.close();
  EXPECT_FALSE(q.try_push(8, 1));
  EXPECT_TRUE(q.pop_all(out, std::chrono::milliseconds(0)));
  EXPECT_EQ(out, std::vector<int>{7});
  EXPECT_FALSE(q.pop_all(out, std::chrono::milliseconds(0)));
}

TEST(BoundedQueue, WaitForWeightSleepsThroughSmallArrivals) {
  BoundedQueue<int> q(100, 30);
  std::vector<int> out;
  ASSERT_TRUE(q.try_push(1, 10));
  ASSERT_TRUE(q.try_push(2, 10));
  // Under the wake weight: the wait runs to its timeout and takes nothing.
  auto t0 = std::chrono::steady_clock::now();
  q.wait_for_weight(q.wake_weight(), std::chrono::milliseconds(30));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(30));
  EXPECT_EQ(q.size(), 2u);
  // Reaching it ends the wait long before its timeout.
  std::thread producer([&q] { q.try_push(3, 10); });
  t0 = std::chrono::steady_clock::now();
  q.wait_for_weight(q.wake_weight(), std::chrono::seconds(60));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(30));
  producer.join();
  ASSERT_TRUE(q.pop_all(out, std::chrono::milliseconds(0)));
  EXPECT_EQ(out, (std::vector<int>{1, 2, 3}));
  // A consumer waiting for its first item is still woken by one.
  out.clear();
  std::thread late([&q] { q.try_push(4, 1); });
  t0 = std::chrono::steady_clock::now();
  q.wait_for_weight(0, std::chrono::seconds(60));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(30));
  late.join();
  ASSERT_TRUE(q.pop_all(out, std::chrono::seconds(60)));
  EXPECT_EQ(out, std::vector<int>{4});
  // notify() ends a wait with nothing queued (it is repeated until it lands
  // during the wait).
  std::atomic<bool> woken{false};
  std::thread stopper([&] {
    while (!woken.load()) {
      q.notify();
      std::this_thread::yield();
    }
  });
  t0 = std::chrono::steady_clock::now();
  q.wait_for_weight(q.wake_weight(), std::chrono::seconds(60));
  woken.store(true);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(30));
  stopper.join();
}

// A consumer waiting for weight is not woken by arrivals that leave the
// queue under the wake weight, not even by the first one into an empty queue.
TEST(BoundedQueue, ArrivalsUnderTheWakeWeightWakeNoWeightWaiter) {
  BoundedQueue<int> q(100, 30);
  std::thread consumer([&q] { q.wait_for_weight(q.wake_weight(), std::chrono::seconds(60)); });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (q.waiting() == 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::yield();
  ASSERT_EQ(q.waiting(), 1u);
  ASSERT_TRUE(q.try_push(1, 10));
  ASSERT_TRUE(q.try_push(2, 10));
  EXPECT_EQ(q.notifications(), 0u);
  ASSERT_TRUE(q.try_push(3, 10));  // reaches the wake weight: the consumer wakes
  consumer.join();
  EXPECT_EQ(q.notifications(), 1u);
}

TEST(BoundedQueue, ManyProducersLoseNothingAccepted) {
  BoundedQueue<int> q(1 << 20);
  constexpr int kPerThread = 20000;
  std::vector<std::thread> producers;
  for (int t = 0; t < 4; ++t) {
    producers.emplace_back([&q] {
      for (int i = 0; i < kPerThread; ++i) {
        while (!q.try_push(i, 1)) {
        }
      }
    });
  }
  std::vector<int> out;
  long long sum = 0;
  size_t count = 0;
  while (count < 4u * kPerThread) {
    out.clear();
    q.pop_all(out, std::chrono::milliseconds(10));
    for (int v : out)
      sum += v;
    count += out.size();
  }
  for (auto& p : producers)
    p.join();
  EXPECT_EQ(count, 4u * kPerThread);
  EXPECT_EQ(sum, 4LL * kPerThread * (kPerThread - 1) / 2);
}

}  // namespace
}  // namespace sidetrace

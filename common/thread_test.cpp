#include "common/thread.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <stdexcept>
#include <thread>

namespace sidetrace {
namespace {

int my_nice() {
  errno = 0;
  return getpriority(PRIO_PROCESS, 0);
}

TEST(ThreadTest, ANameIsSetAndCutTo15Characters) {
  std::array<char, 32> name{};
  std::thread([&] {
    set_thread_name("st-a-rather-long-name");
    pthread_getname_np(pthread_self(), name.data(), name.size());
  }).join();
  EXPECT_STREQ(name.data(), "st-a-rather-lon");
}

TEST(ThreadTest, AThreadThatThrowsEndsAloneAndIsRecorded) {
  ThreadFailures::global().clear();
  bool after = false;
  std::thread([] { run_thread("st-thrower", [] { throw std::runtime_error("boom"); }); }).join();
  std::thread([] { run_thread("st-odd", [] { throw 42; }); }).join();
  std::thread([&] { run_thread("st-fine", [&] { after = true; }); }).join();
  EXPECT_TRUE(after);  // the process went on
  EXPECT_EQ(ThreadFailures::global().count(), 2u);
  EXPECT_EQ(ThreadFailures::global().first(), "st-thrower: boom");
  ThreadFailures::global().clear();
  EXPECT_EQ(ThreadFailures::global().first(), "");
}

TEST(ThreadTest, LoweringThePriorityChangesTheCallingThreadOnly) {
  const int before = my_nice();
  int inside = 0;
  bool ok = false;
  std::thread([&] {
    ok = lower_thread_priority(3);
    inside = my_nice();
  }).join();
  ASSERT_TRUE(ok);
  EXPECT_EQ(inside, std::min(before + 3, 19));
  EXPECT_EQ(my_nice(), before);
}

TEST(ThreadTest, ThePriorityStopsAtTheLowest) {
  int inside = 0;
  std::thread([&] {
    EXPECT_TRUE(lower_thread_priority(40));
    inside = my_nice();
  }).join();
  EXPECT_EQ(inside, 19);
}

}  // namespace
}  // namespace sidetrace

// Crash durability with a real process: a child runs the writer and reports
// each committed message; it is killed with SIGKILL at random points, many
// times over the same store. Every reported message must be stored exactly
// once after a reopen.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "buffer/store.h"
#include "buffer/testing/temp_dir.h"

namespace sidetrace::buffer {
namespace {

struct Reported {
  uint64_t seq;
  std::string trace_id;
};

// Runs the helper until it has reported at least `min_lines` commits, then
// kills it. Returns every complete line it printed.
std::vector<Reported> run_and_kill(const std::string& dir, int run, size_t min_lines) {
  int fds[2];
  EXPECT_EQ(::pipe(fds), 0);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], 1);
    ::close(fds[0]);
    ::close(fds[1]);
    std::string r = std::to_string(run);
    ::execl(SIDETRACE_CRASH_HELPER, SIDETRACE_CRASH_HELPER, dir.c_str(), r.c_str(),
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(fds[1]);
  std::string text;
  size_t lines = 0;
  char buf[65536];
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (lines < min_lines && std::chrono::steady_clock::now() < deadline) {
    pollfd p{fds[0], POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n <= 0) break;
    for (ssize_t i = 0; i < n; ++i)
      lines += buf[i] == '\n';
    text.append(buf, static_cast<size_t>(n));
  }
  ::kill(pid, SIGKILL);
  // Everything written before the kill is still in the pipe.
  for (;;) {
    ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n <= 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFSIGNALED(status)) << "the helper exited by itself: " << status;
  std::vector<Reported> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (in.eof()) break;  // a line cut by the kill
    auto sp = line.find(' ');
    out.push_back(Reported{std::stoull(line.substr(0, sp)), line.substr(sp + 1)});
  }
  return out;
}

TEST(CrashTest, KilledWriterLosesNothingReportedAndDuplicatesNothing) {
  testing::TempDir dir;
  std::mt19937 rng(12345);
  std::vector<Reported> reported;
  for (int run = 0; run < 8; ++run) {
    size_t min_lines = 1 + rng() % 20000;
    auto r = run_and_kill(dir.str(), run, min_lines);
    EXPECT_GE(r.size(), std::min<size_t>(min_lines, 1));
    reported.insert(reported.end(), r.begin(), r.end());
  }
  ASSERT_FALSE(reported.empty());

  std::unique_ptr<Store> store;
  Status s = Store::open(StoreOptions{.data_dir = dir.str(), .sync = SyncMode::kOs}, &store);
  ASSERT_TRUE(s.ok()) << s.ToString();

  // Everything stored, through the pending records (trace, message count)
  // and the events.
  std::vector<Committed> pending;
  ASSERT_TRUE(store->scan_pending(0, SIZE_MAX, &pending).ok());
  std::set<std::string> traces;
  size_t recorded = 0;
  for (const auto& p : pending) {
    traces.insert(p.trace_id);
    recorded += p.record_messages;
  }
  std::map<uint64_t, std::string> by_seq;
  std::set<std::string> raws;
  for (const auto& t : traces) {
    std::vector<StoredEvent> ev;
    ASSERT_TRUE(store->read_trace(t, &ev).ok());
    for (const auto& e : ev) {
      EXPECT_TRUE(raws.insert(e.raw).second) << "stored twice: " << e.raw;
      EXPECT_TRUE(by_seq.emplace(e.seq, t).second) << e.seq;
    }
  }
  // Every record is a stored event, and the records count every event.
  for (const auto& p : pending)
    EXPECT_EQ(by_seq.count(p.seq), 1u) << p.seq;
  EXPECT_EQ(by_seq.size(), recorded);
  for (const auto& r : reported) {
    auto it = by_seq.find(r.seq);
    ASSERT_NE(it, by_seq.end()) << "reported persisted but lost: seq " << r.seq;
    EXPECT_EQ(it->second, r.trace_id);
  }
  // Sequence numbers were never reused across the crashes.
  std::set<uint64_t> seen;
  for (const auto& r : reported)
    EXPECT_TRUE(seen.insert(r.seq).second) << r.seq;
}

}  // namespace
}  // namespace sidetrace::buffer

// The systemd protocols, tested by playing systemd's side with real sockets:
// a notify socket the test reads, sockets passed as fds 3.. in a forked child,
// and the `sidetrace` binary started as systemd would start it. Also checks
// the shipped units (systemd-analyze verify), the default configuration file
// (`sidetrace config check`) and the container entrypoint (env-only config).
// Waits poll a condition with a deadline.
#include "agent/systemd.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/wait_until.h"
#include "config/config.h"

namespace fs = std::filesystem;
using sidetrace::wait_until;
namespace sd = sidetrace::agent::systemd;
using namespace std::chrono_literals;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Short names: socket paths must fit in 108 bytes.
fs::path temp_dir(const std::string& tag) {
  static int n = 0;
  fs::path d = fs::temp_directory_path() /
               ("sidetrace-sd-" + std::to_string(::getpid()) + "-" + tag + std::to_string(n++));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

sockaddr_un unix_addr(const std::string& name, socklen_t* len) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, name.data(), name.size());
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size() +
                                (name[0] == '\0' ? 0 : 1));
  return a;
}

// Binds a Unix socket of `type` at `path` ("\0name" for an abstract one);
// a stream socket also listens.
int bind_unix(int type, const std::string& path) {
  int fd = ::socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  socklen_t len = 0;
  sockaddr_un a = unix_addr(path, &len);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), len) != 0) return -1;
  if (type == SOCK_STREAM && ::listen(fd, 16) != 0) return -1;
  return fd;
}

int bind_inet(int type) {
  int fd = ::socket(AF_INET, type | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) return -1;
  if (type == SOCK_STREAM && ::listen(fd, 16) != 0) return -1;
  return fd;
}

// systemd's end of NOTIFY_SOCKET: a bound datagram socket the test reads.
class NotifyReceiver {
 public:
  // `abstract`: an abstract-namespace socket ("@name" in NOTIFY_SOCKET).
  NotifyReceiver(const fs::path& dir, bool abstract) {
    if (abstract) {
      std::string name = "sidetrace-notify-" + std::to_string(::getpid()) + "-" +
                         std::to_string(reinterpret_cast<uintptr_t>(this));
      fd_ = bind_unix(SOCK_DGRAM, std::string(1, '\0') + name);
      env_value_ = "@" + name;
    } else {
      std::string path = (dir / "notify.sock").string();
      fd_ = bind_unix(SOCK_DGRAM, path);
      env_value_ = path;
    }
  }
  ~NotifyReceiver() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool ok() const { return fd_ >= 0; }
  const std::string& env_value() const { return env_value_; }

  // Reads every datagram that has arrived, without waiting.
  void drain() {
    char buf[4096];
    while (true) {
      ssize_t n = ::recv(fd_, buf, sizeof(buf), MSG_DONTWAIT);
      if (n < 0) return;
      messages_.emplace_back(buf, static_cast<size_t>(n));
    }
  }
  // Waits for a datagram equal to `text` (or, with `prefix`, starting with it).
  bool wait_for(const std::string& text, bool prefix = false,
                std::chrono::milliseconds limit = 15s) {
    return wait_until(
        [&] {
          drain();
          for (size_t i = seen_; i < messages_.size(); ++i) {
            if (prefix ? messages_[i].starts_with(text) : messages_[i] == text) {
              seen_ = i + 1;
              return true;
            }
          }
          return false;
        },
        limit);
  }
  size_t count(const std::string& text) {
    drain();
    size_t n = 0;
    for (const auto& m : messages_)
      n += m == text;
    return n;
  }
  const std::vector<std::string>& messages() {
    drain();
    return messages_;
  }

 private:
  int fd_ = -1;
  std::string env_value_;
  std::vector<std::string> messages_;
  size_t seen_ = 0;
};

// Restores one environment variable at scope exit.
class EnvGuard {
 public:
  explicit EnvGuard(const char* name) : name_(name) {
    const char* v = std::getenv(name);
    if (v) old_ = v;
    had_ = v != nullptr;
  }
  ~EnvGuard() {
    if (had_) {
      ::setenv(name_, old_.c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  void set(const std::string& v) { ::setenv(name_, v.c_str(), 1); }
  void unset() { ::unsetenv(name_); }

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

class NotifyTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = temp_dir("notify"); }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
  EnvGuard notify_env_{"NOTIFY_SOCKET"};
};

TEST_F(NotifyTest, SendsEachStateToAPathSocket) {
  NotifyReceiver rx(dir_, false);
  ASSERT_TRUE(rx.ok());
  notify_env_.set(rx.env_value());

  EXPECT_TRUE(sd::notify_ready());
  EXPECT_TRUE(sd::notify_watchdog());
  EXPECT_TRUE(sd::notify_stopping());
  EXPECT_TRUE(sd::notify_status("serving\non three sockets"));
  EXPECT_TRUE(sd::notify_reloading());
  ASSERT_TRUE(wait_until([&] { return rx.messages().size() >= 5; }));
  const auto& m = rx.messages();
  EXPECT_EQ(m[0], "READY=1");
  EXPECT_EQ(m[1], "WATCHDOG=1");
  EXPECT_EQ(m[2], "STOPPING=1");
  EXPECT_EQ(m[3], "STATUS=serving on three sockets");  // one assignment, one line
  EXPECT_TRUE(std::regex_match(m[4], std::regex("RELOADING=1\nMONOTONIC_USEC=[0-9]+"))) << m[4];
}

TEST_F(NotifyTest, SendsToAnAbstractSocket) {
  NotifyReceiver rx(dir_, true);
  ASSERT_TRUE(rx.ok());
  ASSERT_EQ(rx.env_value()[0], '@');
  notify_env_.set(rx.env_value());
  std::string err;
  EXPECT_TRUE(sd::notify("READY=1\nSTATUS=up", &err)) << err;
  EXPECT_TRUE(rx.wait_for("READY=1\nSTATUS=up"));
}

TEST_F(NotifyTest, IsANoOpWithoutNotifySocket) {
  notify_env_.unset();
  std::string err = "stale";
  EXPECT_FALSE(sd::notify("READY=1", &err));
  EXPECT_EQ(err, "");
  EXPECT_FALSE(sd::notify_ready());
}

TEST_F(NotifyTest, ReportsAnUnusableNotifySocket) {
  std::string err;
  // Each error names the variable's value and the cause.
  notify_env_.set("relative/notify.sock");
  EXPECT_FALSE(sd::notify("READY=1", &err));
  EXPECT_NE(err.find("NOTIFY_SOCKET=relative/notify.sock: "), std::string::npos) << err;
  EXPECT_NE(err.find(std::strerror(EINVAL)), std::string::npos) << err;

  const std::string nobody = (dir_ / "nobody-listens.sock").string();
  notify_env_.set(nobody);
  EXPECT_FALSE(sd::notify("READY=1", &err));
  EXPECT_NE(err.find("NOTIFY_SOCKET=" + nobody + ": "), std::string::npos) << err;
  EXPECT_NE(err.find(std::strerror(ENOENT)), std::string::npos) << err;

  notify_env_.set("/" + std::string(200, 'x'));
  EXPECT_FALSE(sd::notify("READY=1", &err));
  EXPECT_NE(err.find("x: "), std::string::npos) << err;  // the path, then why
}

TEST(WatchdogIntervalTest, ReadsWatchdogUsecForThisProcessOnly) {
  EnvGuard usec("WATCHDOG_USEC"), pid("WATCHDOG_PID");
  usec.unset();
  pid.unset();
  EXPECT_EQ(sd::watchdog_interval().count(), 0);
  usec.set("30000000");
  EXPECT_EQ(sd::watchdog_interval(), 30s);
  pid.set(std::to_string(::getpid()));
  EXPECT_EQ(sd::watchdog_interval(), 30s);
  pid.set(std::to_string(::getpid() + 1));
  EXPECT_EQ(sd::watchdog_interval().count(), 0) << "meant for another process";
  pid.set("not-a-pid");
  EXPECT_EQ(sd::watchdog_interval().count(), 0);
  pid.unset();
  for (const char* bad : {"", "0", "-5", "12abc", "abc"}) {
    usec.set(bad);
    EXPECT_EQ(sd::watchdog_interval().count(), 0) << bad;
  }
}

class WatchdogTest : public NotifyTest {
 protected:
  EnvGuard usec_{"WATCHDOG_USEC"};
  EnvGuard pid_{"WATCHDOG_PID"};
};

TEST_F(WatchdogTest, PingsAtHalfTheIntervalFromTheEventLoopUntilStopped) {
  NotifyReceiver rx(dir_, false);
  ASSERT_TRUE(rx.ok());
  notify_env_.set(rx.env_value());
  usec_.set("20000");  // 20 ms: a ping every 10 ms
  pid_.set(std::to_string(::getpid()));

  boost::asio::io_context io;
  sd::Watchdog wd(io);
  EXPECT_EQ(wd.start(), 20ms);
  // The first ping goes out at start(), before the loop turns.
  EXPECT_TRUE(rx.wait_for("WATCHDOG=1", false, 5s));
  // The rest only while the loop runs.
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (rx.count("WATCHDOG=1") < 6 && std::chrono::steady_clock::now() < deadline) {
    io.run_for(5ms);
  }
  EXPECT_GE(rx.count("WATCHDOG=1"), 6u);
  EXPECT_GE(wd.pings(), 6u);
  EXPECT_EQ(wd.failures(), 0u);

  // A loop that does not turn sends nothing.
  size_t before = rx.count("WATCHDOG=1");
  EXPECT_FALSE(wait_until([&] { return rx.count("WATCHDOG=1") > before; }, 50ms))
      << "pinged with the loop not running";

  // stop(): the timer is gone, so the io_context runs out of work at once.
  wd.stop();
  io.restart();
  io.run_for(10s);
  EXPECT_TRUE(io.stopped());
  EXPECT_LE(rx.count("WATCHDOG=1"), before + 1);
}

// While the agent says it is stuck, no ping goes out (systemd then restarts
// it); pings resume when it moves again.
TEST_F(WatchdogTest, WithholdsPingsWhileTheAgentIsStuck) {
  NotifyReceiver rx(dir_, false);
  ASSERT_TRUE(rx.ok());
  notify_env_.set(rx.env_value());
  usec_.set("20000");
  pid_.set(std::to_string(::getpid()));
  std::atomic<bool> alive{false};
  boost::asio::io_context io;
  sd::Watchdog wd(io, [&] { return alive.load(); });
  EXPECT_EQ(wd.start(), 20ms);
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (wd.withheld() < 4 && std::chrono::steady_clock::now() < deadline)
    io.run_for(5ms);
  EXPECT_GE(wd.withheld(), 4u);
  EXPECT_EQ(wd.pings(), 0u);
  EXPECT_EQ(rx.count("WATCHDOG=1"), 0u);

  alive = true;
  deadline = std::chrono::steady_clock::now() + 10s;
  while (rx.count("WATCHDOG=1") < 2 && std::chrono::steady_clock::now() < deadline)
    io.run_for(5ms);
  EXPECT_GE(rx.count("WATCHDOG=1"), 2u);
  wd.stop();
}

TEST_F(WatchdogTest, DoesNothingWhenTheWatchdogIsOff) {
  NotifyReceiver rx(dir_, false);
  notify_env_.set(rx.env_value());
  usec_.unset();
  boost::asio::io_context io;
  sd::Watchdog wd(io);
  EXPECT_EQ(wd.start().count(), 0);
  io.run_for(10s);  // returns at once: nothing was scheduled
  EXPECT_TRUE(io.stopped());
  EXPECT_EQ(wd.pings(), 0u);
  EXPECT_EQ(rx.messages().size(), 0u);
}

TEST_F(WatchdogTest, CountsPingsThatCannotBeSent) {
  notify_env_.set((dir_ / "gone.sock").string());
  usec_.set("1000000");
  pid_.unset();
  boost::asio::io_context io;
  sd::Watchdog wd(io);
  EXPECT_EQ(wd.start(), 1s);
  EXPECT_EQ(wd.pings(), 1u);
  EXPECT_EQ(wd.failures(), 1u);
}

// ---- socket activation, each case in a forked child whose fds 3.. it may replace.

// Runs `fn` in a child process and returns what it returned.
std::string in_child(const std::function<std::string()>& fn) {
  int p[2];
  if (::pipe(p) != 0) return "pipe failed";
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(p[0]);
    // Out of the way of fds 3.., which the child hands out as systemd would.
    ::dup2(p[1], 100);
    ::close(p[1]);
    std::string r = fn();
    ssize_t w = ::write(100, r.data(), r.size());
    ::_exit(w == static_cast<ssize_t>(r.size()) ? 0 : 1);
  }
  ::close(p[1]);
  std::string out;
  char buf[1024];
  ssize_t n;
  while ((n = ::read(p[0], buf, sizeof(buf))) > 0)
    out.append(buf, static_cast<size_t>(n));
  ::close(p[0]);
  int st = 0;
  ::waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) out += " [child failed]";
  return out;
}

// In the child: places `fds` at 3, 4, ... as systemd does (without
// FD_CLOEXEC) and sets the variables (LISTEN_PID to `pid`, or this process).
void pass_fds(const std::vector<int>& fds, const std::string& names, pid_t pid = 0) {
  std::vector<int> high;
  for (int fd : fds)
    high.push_back(::fcntl(fd, F_DUPFD, 200));
  for (size_t i = 0; i < high.size(); ++i) {
    ::dup2(high[i], 3 + static_cast<int>(i));
    ::close(high[i]);
  }
  ::setenv("LISTEN_FDS", std::to_string(fds.size()).c_str(), 1);
  ::setenv("LISTEN_PID", std::to_string(pid ? pid : ::getpid()).c_str(), 1);
  if (names.empty()) {
    ::unsetenv("LISTEN_FDNAMES");
  } else {
    ::setenv("LISTEN_FDNAMES", names.c_str(), 1);
  }
}

// What listen_fds() did, as one line the parent can compare.
std::string take_and_describe(int passed) {
  sd::ListenFds got;
  std::string err;
  std::error_code ec = sd::listen_fds(&got, &err);
  std::string r = ec ? "error: " + err : "ok";
  r += " stream=" + std::to_string(got.stream_fd) + " dgram=" + std::to_string(got.dgram_fd) +
       " udp=" + std::to_string(got.udp_fd) + " passed=" + std::to_string(got.passed);
  r += " open=";
  for (int fd = 3; fd < 3 + passed; ++fd)
    r += ::fcntl(fd, F_GETFD) < 0 ? '-' : (::fcntl(fd, F_GETFD) & FD_CLOEXEC) ? 'c' : 'o';
  bool env_left =
      std::getenv("LISTEN_FDS") || std::getenv("LISTEN_PID") || std::getenv("LISTEN_FDNAMES");
  r += env_left ? " env=left" : " env=unset";
  return r;
}

class ListenFdsTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = temp_dir("listen"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

TEST_F(ListenFdsTest, ClassifiesByFileDescriptorName) {
  std::string r = in_child([&] {
    int udp = bind_inet(SOCK_DGRAM);
    int stream = bind_unix(SOCK_STREAM, path("s.sock"));
    int dgram = bind_unix(SOCK_DGRAM, path("d.sock"));
    pass_fds({udp, stream, dgram}, "udp:stream:dgram");
    return take_and_describe(3);
  });
  EXPECT_EQ(r, "ok stream=4 dgram=5 udp=3 passed=3 open=ccc env=unset");
}

TEST_F(ListenFdsTest, ClassifiesByKindWhenTheNamesSayNothing) {
  // systemd's default name for every fd is the socket unit's name.
  for (std::string names : {"sidetrace.socket:sidetrace.socket:sidetrace.socket", ""}) {
    std::string r = in_child([&] {
      int dgram = bind_unix(SOCK_DGRAM, path("d.sock"));
      int udp = bind_inet(SOCK_DGRAM);
      int stream = bind_unix(SOCK_STREAM, path("s.sock"));
      pass_fds({dgram, udp, stream}, names);
      return take_and_describe(3);
    });
    EXPECT_EQ(r, "ok stream=5 dgram=3 udp=4 passed=3 open=ccc env=unset") << names;
    fs::remove(path("d.sock"));
    fs::remove(path("s.sock"));
  }
}

TEST_F(ListenFdsTest, TakesASubsetOfTheTransports) {
  std::string r = in_child([&] {
    pass_fds({bind_unix(SOCK_STREAM, path("s.sock"))}, "stream");
    return take_and_describe(1);
  });
  EXPECT_EQ(r, "ok stream=3 dgram=-1 udp=-1 passed=1 open=c env=unset");
}

TEST_F(ListenFdsTest, IgnoresFdsMeantForAnotherProcess) {
  std::string r = in_child([&] {
    pass_fds({bind_unix(SOCK_STREAM, path("s.sock"))}, "stream", ::getppid());
    return take_and_describe(1);
  });
  // Not ours: nothing taken, the fd left as it was, the variables removed.
  EXPECT_EQ(r, "ok stream=-1 dgram=-1 udp=-1 passed=0 open=o env=unset");
}

TEST_F(ListenFdsTest, DoesNothingWithoutListenFds) {
  std::string r = in_child([&] {
    ::unsetenv("LISTEN_FDS");
    ::unsetenv("LISTEN_PID");
    return take_and_describe(0);
  });
  EXPECT_EQ(r, "ok stream=-1 dgram=-1 udp=-1 passed=0 open= env=unset");
}

TEST_F(ListenFdsTest, RefusesUnusableSocketsAndClosesEveryPassedFd) {
  struct Case {
    std::string what;
    std::function<void()> setup;
    int passed;
    std::string expect;  // a fragment of the error
  };
  std::vector<Case> cases = {
      {"name does not match the socket",
       [&] { pass_fds({bind_unix(SOCK_DGRAM, path("d.sock"))}, "stream"); }, 1,
       "fd 3 (\"stream\") should be a unix stream socket (listening) but is: unix datagram"},
      {"a TCP socket", [&] { pass_fds({bind_inet(SOCK_STREAM)}, "web"); }, 1,
       "fd 3 (\"web\") is tcp 127.0.0.1:"},
      {"a stream socket that does not listen",
       [&] {
         int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
         socklen_t len = 0;
         sockaddr_un a = unix_addr(path("quiet.sock"), &len);
         ::bind(fd, reinterpret_cast<sockaddr*>(&a), len);
         pass_fds({fd}, "");
       },
       1, "is unix stream (not listening)"},
      {"not a socket", [&] { pass_fds({::open("/dev/null", O_RDONLY)}, "stream"); }, 1,
       "but is: not a socket"},
      {"two stream sockets",
       [&] {
         pass_fds({bind_unix(SOCK_STREAM, path("a.sock")), bind_unix(SOCK_STREAM, path("b.sock"))},
                  "");
       },
       2, "two unix stream sockets were passed (fd 3 and fd 4)"},
      {"names do not match the count",
       [&] {
         pass_fds({bind_inet(SOCK_DGRAM), bind_inet(SOCK_DGRAM)}, "udp");
       },
       2, "LISTEN_FDNAMES=udp: Invalid argument"},
      {"an fd that is not open",
       [&] {
         pass_fds({}, "");
         ::setenv("LISTEN_FDS", "1", 1);
         ::close(3);
       },
       1, "LISTEN_FDS=1, LISTEN_FDNAMES=(unset): Bad file descriptor"},
  };
  for (const auto& c : cases) {
    std::string r = in_child([&] {
      c.setup();
      return take_and_describe(c.passed);
    });
    EXPECT_TRUE(r.starts_with("error: socket activation: ")) << c.what << ": " << r;
    EXPECT_NE(r.find(c.expect), std::string::npos) << c.what << ": " << r;
    // Nothing adopted, every passed fd closed, the variables gone.
    std::string tail =
        " stream=-1 dgram=-1 udp=-1 passed=0 open=" + std::string(c.passed, '-') + " env=unset";
    EXPECT_TRUE(r.ends_with(tail)) << c.what << ": " << r;
    for (const auto& f : fs::directory_iterator(dir_))
      fs::remove(f.path());
  }
}

TEST_F(ListenFdsTest, RefusesMalformedVariables) {
  for (auto [fds, pid, expect] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"three", "", "LISTEN_FDS=three"},
           {"-1", "", "LISTEN_FDS=-1"},
           {"1", "12x", "LISTEN_PID=12x"}}) {
    std::string r = in_child([&] {
      ::setenv("LISTEN_FDS", fds.c_str(), 1);
      ::setenv("LISTEN_PID", pid.empty() ? std::to_string(::getpid()).c_str() : pid.c_str(), 1);
      return take_and_describe(0);
    });
    EXPECT_TRUE(r.starts_with("error: socket activation: ")) << r;
    EXPECT_NE(r.find(expect + ","), std::string::npos) << r;
    EXPECT_TRUE(r.ends_with("env=unset")) << r;
  }
}

TEST_F(ListenFdsTest, DescribesSockets) {
  int s = bind_unix(SOCK_STREAM, path("s.sock"));
  int d = bind_unix(SOCK_DGRAM,
                    std::string(1, '\0') + "sidetrace-describe-" + std::to_string(::getpid()));
  int u = bind_inet(SOCK_DGRAM);
  EXPECT_EQ(sd::describe_socket(s), "unix stream " + path("s.sock"));
  EXPECT_EQ(sd::describe_socket(d),
            "unix datagram @sidetrace-describe-" + std::to_string(::getpid()));
  EXPECT_TRUE(sd::describe_socket(u).starts_with("udp 127.0.0.1:")) << sd::describe_socket(u);
  int fd = ::open("/dev/null", O_RDONLY);
  EXPECT_EQ(sd::describe_socket(fd), "not a socket");
  for (int f : {s, d, u, fd})
    ::close(f);
  EXPECT_EQ(sd::describe_socket(fd), "not an open fd");
}

// ---- the real binary, started as systemd starts it.

const char* kBin = SIDETRACE_BIN;
const fs::path kSourceDir = SIDETRACE_SOURCE_DIR;

// Variables a test process may have inherited that would change what the
// started program does.
void clear_inherited_env() {
  for (const char* v : {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
                        "LISTEN_PID", "LISTEN_FDNAMES"})
    ::unsetenv(v);
}

struct Result {
  int status = -1;
  std::string out, err;
};

// A child process with its stdout and stderr in files under `dir`.
class Process {
 public:
  explicit Process(fs::path dir) : dir_(std::move(dir)) { fs::create_directories(dir_); }
  ~Process() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  // `before_exec` runs in the child after the environment is set.
  void start(const std::string& program, const std::vector<std::string>& args,
             const std::vector<std::string>& env, const std::function<void()>& before_exec = {}) {
    pid_ = ::fork();
    if (pid_ == 0) {
      int fi = ::open("/dev/null", O_RDONLY);
      int fo = ::open((dir_ / "out").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      int fe = ::open((dir_ / "err").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      ::dup2(fi, 0);
      ::dup2(fo, 1);
      ::dup2(fe, 2);
      clear_inherited_env();
      for (const auto& e : env) {
        size_t eq = e.find('=');
        ::setenv(e.substr(0, eq).c_str(), e.substr(eq + 1).c_str(), 1);
      }
      if (before_exec) before_exec();
      std::vector<char*> argv{const_cast<char*>(program.c_str())};
      for (const auto& a : args)
        argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(program.c_str(), argv.data());
      ::_exit(127);
    }
  }

  // Runs to completion.
  Result run(const std::string& program, const std::vector<std::string>& args,
             const std::vector<std::string>& env = {}) {
    fs::remove(dir_ / "out");
    fs::remove(dir_ / "err");
    start(program, args, env);
    wait_until([&] { return exited(); }, 60s);
    return Result{exit_status_, out(), log()};
  }

  std::string log() const { return slurp(dir_ / "err"); }
  std::string out() const { return slurp(dir_ / "out"); }

  bool exited() {
    if (pid_ <= 0) return true;
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) == pid_) {
      exit_status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      pid_ = -1;
      return true;
    }
    return false;
  }

  int signal_and_wait(int sig, std::chrono::milliseconds limit = 25s) {
    if (pid_ > 0) ::kill(pid_, sig);
    if (!wait_until([&] { return exited(); }, limit)) return -1;
    return exit_status_;
  }
  void signal(int sig) { ::kill(pid_, sig); }
  int exit_status() const { return exit_status_; }

 private:
  fs::path dir_;
  pid_t pid_ = -1;
  int exit_status_ = -1;
};

class BinaryTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = temp_dir("bin"); }
  void TearDown() override { fs::remove_all(dir_); }

  // The environment of an agent confined to the test's directory.
  std::vector<std::string> agent_env() const {
    return {"SIDETRACE_DATA_DIR=" + (dir_ / "data").string(),
            "SIDETRACE_LISTEN_UNIX_STREAM=" + (dir_ / "agent.sock").string(),
            "SIDETRACE_LISTEN_UNIX_DGRAM=" + (dir_ / "agent.dgram.sock").string(),
            "SIDETRACE_LISTEN_UDP=127.0.0.1:0",
            "SIDETRACE_LISTEN_OTLP_HTTP=127.0.0.1:0",
            "SIDETRACE_ADMIN_LISTEN=127.0.0.1:0",
            "SIDETRACE_TRACE_QUIET_PERIOD_MS=50",
            "SIDETRACE_BUFFER_SYNC=os"};
  }

  Result sidetrace(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
    Process p(dir_ / ("run-" + std::to_string(runs_++)));
    return p.run(kBin, args, env);
  }

  Result emit(const std::string& endpoint, const std::string& trace_id) {
    return sidetrace({"emit", "--endpoint", endpoint, "--kind", "event", "--trace-id", trace_id,
                      "--id", "e1", "--type", "MESSAGE", "--input", "hello", "--output", "world"});
  }

  // Trace ids in `data_dir`/traces.jsonl.
  std::string traces(const fs::path& data_dir) const { return slurp(data_dir / "traces.jsonl"); }

  fs::path dir_;
  int runs_ = 0;
};

std::string admin_addr(const std::string& log) {
  size_t p = log.find("admin: listening on ");
  if (p == std::string::npos) return {};
  size_t e = log.find('\n', p);
  return log.substr(p + 20, e - p - 20);
}

TEST_F(BinaryTest, AgentNotifiesReadyWatchdogReloadAndStopping) {
  NotifyReceiver rx(dir_, false);
  ASSERT_TRUE(rx.ok());
  std::vector<std::string> env = agent_env();
  env.push_back("NOTIFY_SOCKET=" + rx.env_value());
  env.push_back("WATCHDOG_USEC=200000");  // a ping every 100 ms
  Process agent(dir_ / "agent");
  // --set makes the configuration re-readable, so SIGHUP reloads.
  agent.start(kBin, {"agent", "--set", "log.level=info"}, env);

  ASSERT_TRUE(rx.wait_for("READY=1", true)) << agent.log();
  // READY=1 comes after the sockets are bound.
  EXPECT_TRUE(fs::is_socket(dir_ / "agent.sock"));
  EXPECT_TRUE(fs::is_socket(dir_ / "agent.dgram.sock"));
  EXPECT_TRUE(wait_until([&] { return rx.count("WATCHDOG=1") >= 3; })) << agent.log();

  agent.signal(SIGHUP);
  EXPECT_TRUE(rx.wait_for("RELOADING=1", true)) << agent.log();
  EXPECT_TRUE(rx.wait_for("READY=1", true)) << agent.log();

  EXPECT_EQ(agent.signal_and_wait(SIGTERM), 0) << agent.log();
  EXPECT_TRUE(rx.wait_for("STOPPING=1", true, 1s)) << agent.log();
}

TEST_F(BinaryTest, AgentAdoptsSocketActivatedSocketsAndReadsWhatWaitedInThem) {
  const std::string stream_path = (dir_ / "activated.sock").string();
  const std::string dgram_path = (dir_ / "activated.dgram.sock").string();
  int stream = bind_unix(SOCK_STREAM, stream_path);
  int dgram = bind_unix(SOCK_DGRAM, dgram_path);
  ASSERT_GE(stream, 0);
  ASSERT_GE(dgram, 0);

  // Sent before the agent runs: the kernel holds them in the sockets' buffers.
  ASSERT_EQ(emit("unix://" + stream_path, "before-stream").status, 0);
  ASSERT_EQ(emit("unixgram://" + dgram_path, "before-dgram").status, 0);

  NotifyReceiver rx(dir_, false);
  std::vector<std::string> env = agent_env();
  env.push_back("NOTIFY_SOCKET=" + rx.env_value());
  Process agent(dir_ / "agent");
  agent.start(kBin, {"agent"}, env, [&] { pass_fds({stream, dgram}, "stream:dgram"); });
  ::close(stream);
  ::close(dgram);

  ASSERT_TRUE(rx.wait_for("READY=1", true)) << agent.log();
  // The adopted sockets replace the configured paths of their transports.
  EXPECT_FALSE(fs::exists(dir_ / "agent.sock")) << agent.log();
  EXPECT_FALSE(fs::exists(dir_ / "agent.dgram.sock")) << agent.log();
  const fs::path data = dir_ / "data";
  EXPECT_TRUE(wait_until([&] {
    std::string t = traces(data);
    return t.find("before-stream") != std::string::npos &&
           t.find("before-dgram") != std::string::npos;
  })) << agent.log();

  // And they keep serving.
  ASSERT_EQ(emit("unix://" + stream_path, "after-stream").status, 0);
  EXPECT_TRUE(wait_until([&] { return traces(data).find("after-stream") != std::string::npos; }))
      << agent.log();

  EXPECT_EQ(agent.signal_and_wait(SIGTERM), 0) << agent.log();
  // systemd owns the socket files: the agent leaves them for the next start.
  EXPECT_TRUE(fs::is_socket(stream_path));
  EXPECT_TRUE(fs::is_socket(dgram_path));
}

TEST_F(BinaryTest, AgentRefusesAnUnusableActivatedSocket) {
  int tcp = bind_inet(SOCK_STREAM);
  ASSERT_GE(tcp, 0);
  Process agent(dir_ / "agent");
  agent.start(kBin, {"agent"}, agent_env(), [&] { pass_fds({tcp}, "stream"); });
  ::close(tcp);
  ASSERT_TRUE(wait_until([&] { return agent.exited(); })) << agent.log();
  EXPECT_EQ(agent.exit_status(), 1);
  EXPECT_NE(agent.log().find("socket activation: fd 3 (\"stream\") should be a unix stream"),
            std::string::npos)
      << agent.log();
}

// ---- the shipped files.

TEST_F(BinaryTest, DefaultConfigFileStatesEveryKeyWithItsDefault) {
  const fs::path file = kSourceDir / "systemd" / "sidetrace.toml";
  Result shipped = sidetrace({"config", "check", file.string()});
  ASSERT_EQ(shipped.status, 0) << shipped.err;
  std::ofstream(dir_ / "empty.toml") << "";
  Result defaults = sidetrace({"config", "check", (dir_ / "empty.toml").string()});
  ASSERT_EQ(defaults.status, 0) << defaults.err;
  auto body = [](const std::string& s) { return s.substr(s.find('\n') + 1); };
  EXPECT_EQ(body(shipped.out), body(defaults.out)) << "the file must restate the defaults";

  // Every key is written out (not left to the defaults), under its section.
  const std::string text = slurp(file);
  for (const std::string& key : sidetrace::config::key_names()) {
    size_t dot = key.find('.');
    std::string section = dot == std::string::npos ? "" : key.substr(0, dot);
    std::string name = dot == std::string::npos ? key : key.substr(dot + 1);
    std::regex line = key == "upstream.headers" ? std::regex("\n\\[upstream\\.headers\\]\n")
                                                : std::regex("\n" + name + " = [^\n]+");
    size_t from = section.empty() ? 0 : text.find("\n[" + section + "]\n");
    ASSERT_NE(from, std::string::npos) << "no [" << section << "] section";
    size_t to = text.find("\n[", from + 1);
    if (key == "upstream.headers") to = std::string::npos;
    std::string part = text.substr(from, to == std::string::npos ? std::string::npos : to - from);
    EXPECT_TRUE(std::regex_search(part, line)) << key << " is not in " << file;
  }
}

// The SIDETRACE_* settings of a Dockerfile's ENV instructions, as
// "NAME=value" (continuation lines joined, comments skipped).
std::vector<std::string> dockerfile_env(const std::string& text) {
  std::vector<std::string> logical;
  std::string current;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    size_t first = line.find_first_not_of(" \t");
    if (first == std::string::npos || line[first] == '#') continue;
    bool more = line.ends_with('\\');
    current += (current.empty() ? "" : " ") + line.substr(0, line.size() - (more ? 1 : 0));
    if (!more) {
      logical.push_back(current);
      current.clear();
    }
  }
  std::vector<std::string> env;
  for (const auto& l : logical) {
    if (!l.starts_with("ENV ")) continue;
    std::istringstream words(l.substr(4));
    std::string w;
    while (words >> w) {
      if (w.starts_with("SIDETRACE_") && w.find('=') != std::string::npos) env.push_back(w);
    }
  }
  return env;
}

// The SIDETRACE_* variables of the Kubernetes example's containers, as
// "NAME=value"; one taken from a Secret gets `secret` as its value.
std::vector<std::string> kubernetes_env(const std::string& text, const std::string& secret) {
  std::vector<std::string> env;
  std::regex var("- name: (SIDETRACE_[A-Z_]+)\n\\s+(value: \"?([^\"\n]*)\"?|valueFrom:)");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), var); it != std::sregex_iterator();
       ++it) {
    const auto& m = *it;
    env.push_back(m[1].str() + "=" + (m[2].str() == "valueFrom:" ? secret : m[3].str()));
  }
  return env;
}

// The image's build stage takes its packages from the list `make` uses, so
// that the two cannot drift apart.
TEST(DeployFiles, TheImageInstallsThePackagesThroughTheSameScript) {
  const std::string dockerfile = slurp(kSourceDir / "deploy" / "Dockerfile");
  const std::string script = slurp(kSourceDir / "scripts" / "install-deps.sh");
  ASSERT_FALSE(dockerfile.empty());
  EXPECT_NE(dockerfile.find("install-deps.sh --build"), std::string::npos);
  for (const char* pkg : {"librocksdb-dev", "libboost-regex-dev", "libmsgpack-cxx-dev"}) {
    EXPECT_EQ(dockerfile.find(pkg), std::string::npos) << pkg << " is listed in the Dockerfile";
    EXPECT_NE(script.find(pkg), std::string::npos) << pkg;
  }
}

TEST_F(BinaryTest, ImageAndKubernetesExampleProtectTheAdminEndpointAndSockets) {
  using sidetrace::config::Config;
  const std::string dockerfile = slurp(kSourceDir / "deploy" / "Dockerfile");
  const std::string kubernetes = slurp(kSourceDir / "deploy" / "kubernetes.yaml");
  ASSERT_FALSE(dockerfile.empty());
  ASSERT_FALSE(kubernetes.empty());
  const std::vector<std::string> image = dockerfile_env(dockerfile);
  ASSERT_FALSE(image.empty());

  // Protected: the admin endpoint on loopback, or behind a token; the sockets
  // closed to other users.
  auto check = [](const std::vector<std::string>& env, const std::string& what) {
    Config c;
    try {
      c = sidetrace::config::load("", env, {});
    } catch (const sidetrace::config::ConfigError& e) {
      ADD_FAILURE() << what << ": " << e.what();
      return c;
    }
    EXPECT_TRUE(sidetrace::config::is_loopback_listen(c.admin.listen) ||
                !sidetrace::config::admin_token(c).empty())
        << what << ": admin.listen " << c.admin.listen << " without a token";
    EXPECT_EQ(c.listen.socket_mode & 0007, 0u) << what << ": sockets open to every user";
    EXPECT_TRUE(c.listen.otlp_http.empty() ||
                sidetrace::config::is_loopback_listen(c.listen.otlp_http))
        << what << ": OTLP/HTTP on " << c.listen.otlp_http << " takes spans from other hosts";
    return c;
  };
  check(image, "the image");

  // The pod: the image's settings, then the container's.
  const std::string secret = "from-a-kubernetes-secret-0123456789";
  std::vector<std::string> pod = image;
  for (const auto& e : kubernetes_env(kubernetes, secret))
    pod.push_back(e);
  Config c = check(pod, "the Kubernetes example");
  EXPECT_EQ(sidetrace::config::admin_token(c), secret) << "the token comes from the Secret";
  if (!sidetrace::config::is_loopback_listen(c.admin.listen)) {
    // Without the Secret's value, the agent would not start.
    std::vector<std::string> without = image;
    for (const auto& e : kubernetes_env(kubernetes, ""))
      if (!e.ends_with("=")) without.push_back(e);
    EXPECT_THROW(sidetrace::config::load("", without, {}), sidetrace::config::ConfigError);
  }
  // The application reaches the 0660 sockets through the agent's group.
  EXPECT_NE(kubernetes.find("fsGroup: 10001"), std::string::npos);
  EXPECT_NE(slurp(kSourceDir / "deploy" / "compose.yaml").find("group_add: [\"10001\"]"),
            std::string::npos);
}

TEST_F(BinaryTest, SystemdUnitsVerify) {
  const char* candidates[] = {"/usr/bin/systemd-analyze", "/bin/systemd-analyze"};
  std::string analyze;
  for (const char* c : candidates)
    if (::access(c, X_OK) == 0) analyze = c;
  if (analyze.empty()) GTEST_SKIP() << "systemd-analyze is not installed (Debian package systemd)";

  // Verify copies whose ExecStart names the binary that was just built.
  const fs::path units = dir_ / "units";
  fs::create_directories(units);
  for (const char* name : {"sidetrace.service", "sidetrace.socket"}) {
    std::string text = slurp(kSourceDir / "systemd" / name);
    ASSERT_FALSE(text.empty()) << name;
    size_t p = text.find("/usr/bin/sidetrace");
    if (std::string(name) == "sidetrace.service") {
      ASSERT_NE(p, std::string::npos);
    }
    if (p != std::string::npos) text.replace(p, std::strlen("/usr/bin/sidetrace"), kBin);
    std::ofstream(units / name) << text;
  }
  Process p(dir_ / "analyze");
  Result r = p.run(analyze, {"verify", "--man=no", (units / "sidetrace.socket").string(),
                             (units / "sidetrace.service").string()});
  EXPECT_EQ(r.status, 0) << r.err << r.out;
  // Warnings about our units (unknown keys, bad values) fail too.
  std::istringstream lines(r.err + r.out);
  std::string l;
  while (std::getline(lines, l)) {
    EXPECT_EQ(l.find("sidetrace."), std::string::npos) << l;
  }
}

TEST_F(BinaryTest, ContainerEntrypointConfiguresTheAgentFromTheEnvironmentAlone) {
  const fs::path state = dir_ / "volume" / "lib";  // created by the entrypoint
  const fs::path run = dir_ / "volume" / "run";
  std::vector<std::string> env = {
      "SIDETRACE_BIN=" + std::string(kBin),
      "SIDETRACE_DATA_DIR=" + state.string(),
      "SIDETRACE_LISTEN_UNIX_STREAM=" + (run / "agent.sock").string(),
      "SIDETRACE_LISTEN_UNIX_DGRAM=" + (run / "agent.dgram.sock").string(),
      "SIDETRACE_LISTEN_UDP=127.0.0.1:0",
      "SIDETRACE_LISTEN_OTLP_HTTP=127.0.0.1:0",
      "SIDETRACE_ADMIN_LISTEN=127.0.0.1:0",
      "SIDETRACE_TRACE_QUIET_PERIOD_MS=50",
      "SIDETRACE_BUFFER_SYNC=os",
      "PATH=/usr/bin:/bin",
  };
  const std::string script = (kSourceDir / "deploy" / "entrypoint.sh").string();
  Process agent(dir_ / "agent");
  agent.start("/bin/sh", {script}, env);
  ASSERT_TRUE(wait_until([&] { return !admin_addr(agent.log()).empty() || agent.exited(); }))
      << agent.log();
  ASSERT_FALSE(agent.exited()) << agent.log();
  std::string admin = admin_addr(agent.log());
  // The health check the image runs.
  EXPECT_TRUE(wait_until([&] {
    return sidetrace({"status", "--admin", admin}).status == 0;
  })) << agent.log();
  ASSERT_EQ(emit("unix://" + (run / "agent.sock").string(), "from-the-app").status, 0);
  EXPECT_TRUE(wait_until([&] { return traces(state).find("from-the-app") != std::string::npos; }))
      << agent.log();
  // exec: the agent is the process the runtime signals.
  EXPECT_EQ(agent.signal_and_wait(SIGTERM), 0) << agent.log();
  EXPECT_NE(agent.log().find("sidetrace stopped"), std::string::npos) << agent.log();
}

TEST_F(BinaryTest, ContainerEntrypointExplainsADirectoryItCannotUse) {
  std::ofstream(dir_ / "a-file") << "x";
  Process p(dir_ / "entry");
  Result r =
      p.run("/bin/sh", {(kSourceDir / "deploy" / "entrypoint.sh").string()},
            {"SIDETRACE_BIN=" + std::string(kBin),
             "SIDETRACE_DATA_DIR=" + (dir_ / "a-file" / "data").string(), "PATH=/usr/bin:/bin"});
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("SIDETRACE_DATA_DIR"), std::string::npos) << r.err;
}

}  // namespace

// The `sidetrace` binary as a user runs it: real processes, real sockets, a
// real store in a temp dir. Waits poll a condition with a deadline.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>

#include "agent/admin.h"
#include "buffer/store.h"
#include "common/wait_until.h"
#include "ipc/test_support.h"
#include "trace/assembler.h"
#include "upstream/detail/records.h"

namespace fs = std::filesystem;
using sidetrace::wait_until;
using namespace std::chrono_literals;
namespace buffer = sidetrace::buffer;
namespace ipc = sidetrace::ipc;
namespace trace = sidetrace::trace;
namespace upstream = sidetrace::upstream;

namespace {

const char* kBin = SIDETRACE_BIN;

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Result {
  int status = -1;
  std::string out, err;
};

// Runs the binary to completion with `args` and extra environment.
Result run(const std::vector<std::string>& args, const std::vector<std::string>& env = {},
           const std::string& stdin_text = {}) {
  fs::path dir = fs::temp_directory_path() / ("sidetrace-run-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  fs::path out = dir / "out", err = dir / "err", in = dir / "in";
  std::ofstream(in) << stdin_text;
  pid_t pid = ::fork();
  if (pid == 0) {
    int fi = ::open(in.c_str(), O_RDONLY);
    int fo = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int fe = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ::dup2(fi, 0);
    ::dup2(fo, 1);
    ::dup2(fe, 2);
    for (const auto& e : env)
      ::putenv(const_cast<char*>(e.c_str()));
    std::vector<char*> argv{const_cast<char*>(kBin)};
    for (const auto& a : args)
      argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(kBin, argv.data());
    ::_exit(127);
  }
  Result r;
  int st = 0;
  ::waitpid(pid, &st, 0);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  r.out = slurp(out);
  r.err = slurp(err);
  fs::remove_all(dir);
  return r;
}

// A running agent in its own temp dir.
class AgentProcess {
 public:
  explicit AgentProcess(fs::path dir, std::vector<std::string> extra_env = {},
                        std::vector<std::string> args = {})
      : dir_(std::move(dir)) {
    fs::create_directories(dir_);
    env_ = {"SIDETRACE_DATA_DIR=" + (dir_ / "data").string(),
            "SIDETRACE_LISTEN_UNIX_STREAM=" + stream_path(),
            "SIDETRACE_LISTEN_UNIX_DGRAM=" + dgram_path(),
            "SIDETRACE_LISTEN_UDP=127.0.0.1:0",
            "SIDETRACE_LISTEN_OTLP_HTTP=127.0.0.1:0",
            "SIDETRACE_ADMIN_LISTEN=127.0.0.1:0",
            "SIDETRACE_TRACE_QUIET_PERIOD_MS=50",
            "SIDETRACE_BUFFER_SYNC=os"};
    for (auto& e : extra_env)
      env_.push_back(e);
    args_ = std::move(args);
  }
  ~AgentProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  std::string stream_path() const { return (dir_ / "agent.sock").string(); }
  std::string dgram_path() const { return (dir_ / "agent.dgram.sock").string(); }
  fs::path traces_file() const { return dir_ / "data" / "traces.jsonl"; }
  // This run's log (a data dir may hold the logs of earlier runs).
  std::string log() const { return slurp(dir_ / "agent.err").substr(log_offset_); }

  void start() {
    log_offset_ = slurp(dir_ / "agent.err").size();
    pid_ = ::fork();
    if (pid_ == 0) {
      int fo = ::open((dir_ / "agent.out").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      int fe = ::open((dir_ / "agent.err").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      ::dup2(fo, 1);
      ::dup2(fe, 2);
      for (const auto& e : env_)
        ::putenv(const_cast<char*>(e.c_str()));
      std::vector<char*> argv{const_cast<char*>(kBin), const_cast<char*>("agent")};
      for (const auto& a : args_)
        argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(kBin, argv.data());
      ::_exit(127);
    }
  }

  bool wait_ready() {
    return wait_until(
        [&] { return log().find("sidetrace ready") != std::string::npos || exited(); });
  }

  bool exited() {
    if (pid_ <= 0) return true;
    int st = 0;
    pid_t r = ::waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
      exit_status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      pid_ = -1;
      return true;
    }
    return false;
  }

  // Sends `sig` and waits for the exit; returns the exit status or -1.
  int signal_and_wait(int sig, std::chrono::milliseconds limit = 15s) {
    ::kill(pid_, sig);
    if (!wait_until([&] { return exited(); }, limit)) return -1;
    return exit_status_;
  }

  void kill9() {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  // Whole lines only: the agent may be in the middle of writing the last one.
  std::vector<nlohmann::json> traces() const {
    std::vector<nlohmann::json> out;
    std::string all = slurp(traces_file());
    std::stringstream in(all.substr(0, all.rfind('\n') + 1));
    std::string line;
    while (std::getline(in, line)) {
      if (!line.empty()) out.push_back(nlohmann::json::parse(line));
    }
    return out;
  }

  // The admin port, read from the log line the agent prints at start.
  std::string admin_addr() const {
    std::string l = log();
    size_t p = l.rfind("admin: listening on ");
    if (p == std::string::npos) return {};
    size_t e = l.find('\n', p);
    return l.substr(p + 20, e - p - 20);
  }

  const std::vector<std::string>& env() const { return env_; }
  pid_t pid() const { return pid_; }
  int exit_status() const { return exit_status_; }

 private:
  fs::path dir_;
  std::vector<std::string> env_;
  std::vector<std::string> args_;
  pid_t pid_ = -1;
  int exit_status_ = -1;
  size_t log_offset_ = 0;
};

class AgentProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("sidetrace-agent-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Starts `agent` and returns its admin address: empty, with the failure
  // recorded, when it does not become ready or has no admin address.
  static std::string start_for_admin(AgentProcess& agent) {
    agent.start();
    if (!agent.wait_ready()) {
      ADD_FAILURE() << "the agent did not become ready\n" << agent.log();
      return {};
    }
    std::string addr = agent.admin_addr();
    if (addr.empty()) ADD_FAILURE() << "the agent has no admin address\n" << agent.log();
    return addr;
  }

  Result emit(const AgentProcess& a, const std::string& endpoint,
              const std::vector<std::string>& args) {
    std::vector<std::string> full = {"emit", "--endpoint", endpoint};
    full.insert(full.end(), args.begin(), args.end());
    (void)a;
    return run(full);
  }

  fs::path dir_;
};

TEST_F(AgentProcessTest, AcceptsAllThreeTransportsAndStopsCleanlyOnSigterm) {
  AgentProcess agent(dir_);
  agent.start();
  ASSERT_TRUE(agent.wait_ready()) << agent.log();
  ASSERT_FALSE(agent.exited()) << agent.log();

  std::string l = agent.log();
  size_t p = l.find("listening on udp://");
  ASSERT_NE(p, std::string::npos) << l;
  std::string udp = l.substr(p + 13, l.find('\n', p) - p - 13);

  const std::vector<std::string> endpoints = {"unix://" + agent.stream_path(),
                                              "unixgram://" + agent.dgram_path(), udp};
  for (size_t i = 0; i < endpoints.size(); ++i) {
    std::string tid = "trace-" + std::to_string(i);
    Result r = emit(agent, endpoints[i],
                    {"--kind", "event", "--trace-id", tid, "--id", "e1", "--type", "MESSAGE",
                     "--input", "hello", "--output", "world", "--latency-ms", "5"});
    ASSERT_EQ(r.status, 0) << r.err;
  }
  ASSERT_TRUE(wait_until([&] { return agent.traces().size() >= 3; })) << agent.log();
  std::set<std::string> ids;
  for (const auto& t : agent.traces()) {
    ids.insert(t["trace_id"].get<std::string>());
    EXPECT_EQ(t["events"][0]["input"], "hello");
    EXPECT_EQ(t["events"][0]["duration_ms"], 5);
  }
  EXPECT_EQ(ids, (std::set<std::string>{"trace-0", "trace-1", "trace-2"}));

  EXPECT_EQ(agent.signal_and_wait(SIGTERM), 0) << agent.log();
  EXPECT_FALSE(fs::exists(agent.stream_path()));
  EXPECT_FALSE(fs::exists(agent.dgram_path()));
  EXPECT_NE(agent.log().find("sidetrace stopped"), std::string::npos);
}

// POSTs `body` to http://127.0.0.1:`port``target` on a new connection and
// returns the whole response (status line, headers, body); "" on failure.
std::string http_post(unsigned short port, const std::string& target,
                      const std::string& content_type, const std::string& body) {
  namespace net = boost::asio;
  try {
    net::io_context io;
    net::ip::tcp::socket s(io);
    s.connect({net::ip::make_address("127.0.0.1"), port});
    std::string req = "POST " + target +
                      " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + content_type +
                      "\r\nContent-Length: " + std::to_string(body.size()) +
                      "\r\nConnection: close\r\n\r\n" + body;
    net::write(s, net::buffer(req));
    std::string out;
    char buf[4096];
    boost::system::error_code ec;
    for (size_t n; (n = s.read_some(net::buffer(buf), ec)) > 0 || !ec;)
      out.append(buf, n);
    return out;
  } catch (const std::exception&) {
    return {};
  }
}

// The port of the OTLP/HTTP listener, from the log line the agent prints at
// start; 0 if absent.
unsigned short otlp_port(const std::string& log) {
  const std::string tag = "listening on http://127.0.0.1:";
  size_t p = log.find(tag);
  if (p == std::string::npos) return 0;
  return static_cast<unsigned short>(std::stoi(log.substr(p + tag.size())));
}

TEST_F(AgentProcessTest, TakesOtlpHttpSpansAndNamesTheKeyWhenItsPortIsTaken) {
  AgentProcess agent(dir_);
  agent.start();
  ASSERT_TRUE(agent.wait_ready()) << agent.log();
  const unsigned short port = otlp_port(agent.log());
  ASSERT_NE(port, 0) << agent.log();
  const std::string body = R"({"resourceSpans":[{
      "resource":{"attributes":[{"key":"service.name","value":{"stringValue":"shop"}}]},
      "scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c",
        "spanId":"eee19b7ec3c1b174","name":"checkout","startTimeUnixNano":"1700000000000000000",
        "endTimeUnixNano":"1700000000250000000",
        "attributes":[{"key":"input.value","value":{"stringValue":"cart 42"}}]}]}]}]})";
  const std::string reply = http_post(port, "/v1/traces", "application/json", body);
  ASSERT_EQ(reply.rfind("HTTP/1.1 200", 0), 0u) << reply;
  EXPECT_NE(reply.find("Content-Type: application/json"), std::string::npos) << reply;
  ASSERT_TRUE(wait_until([&] { return !agent.traces().empty(); })) << agent.log();
  const auto t = agent.traces()[0];
  EXPECT_EQ(t["trace_id"], "5b8efff798038103d269b633813fc60c");
  EXPECT_EQ(t["metadata"]["service.name"], "shop");
  EXPECT_EQ(t["events"][0]["id"], "eee19b7ec3c1b174");
  EXPECT_EQ(t["events"][0]["name"], "checkout");
  EXPECT_EQ(t["events"][0]["input"], "cart 42");
  EXPECT_EQ(t["events"][0]["duration_ms"], 250);
  unsigned st = 0;
  std::string metrics, err;
  ASSERT_TRUE(sidetrace::agent::admin_get(agent.admin_addr(), "/metrics", &st, &metrics, &err))
      << err;
  EXPECT_NE(metrics.find("sidetrace_otlp_requests_total{outcome=\"ok\"} 1\n"), std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("sidetrace_otlp_spans_total{outcome=\"stored\"} 1\n"), std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("sidetrace_otlp_received_bytes_total " + std::to_string(body.size())),
            std::string::npos)
      << metrics;

  // A second agent whose OTLP port is taken does not start, and says why.
  AgentProcess second(dir_ / "second",
                      {"SIDETRACE_LISTEN_OTLP_HTTP=127.0.0.1:" + std::to_string(port)});
  second.start();
  ASSERT_TRUE(wait_until([&] { return second.exited(); })) << second.log();
  EXPECT_NE(second.exit_status(), 0);
  EXPECT_NE(second.log().find("listen.otlp_http: cannot listen on 127.0.0.1:" +
                              std::to_string(port) + ": Address already in use"),
            std::string::npos)
      << second.log();
  EXPECT_EQ(agent.signal_and_wait(SIGTERM), 0) << agent.log();
}

// A span sent over OTLP and an event sent over the socket that share a trace
// id are one trace, and redaction treats the span like any other event.
TEST_F(AgentProcessTest, OtlpSpansAndSocketEventsOfOneTraceAreOneTraceAndAreRedacted) {
  AgentProcess agent(dir_, {"SIDETRACE_REDACT_DETECTORS=emails"});
  agent.start();
  ASSERT_TRUE(agent.wait_ready()) << agent.log();
  const std::string trace = "5b8efff798038103d269b633813fc60c";
  Result r = emit(agent, "unix://" + agent.stream_path(),
                  {"--kind", "event", "--trace-id", trace, "--id", "00000000000000a1", "--type",
                   "MESSAGE", "--input", "hello", "--latency-ms", "9"});
  ASSERT_EQ(r.status, 0) << r.err;
  const std::string body = R"({"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":")" + trace +
                           R"(","spanId":"eee19b7ec3c1b174","parentSpanId":"00000000000000a1",
      "name":"mail","startTimeUnixNano":"1700000000000000000",
      "endTimeUnixNano":"1700000000001000000",
      "attributes":[{"key":"input.value","value":{"stringValue":"write to bob@example.com"}}]
      }]}]}]})";
  const std::string reply =
      http_post(otlp_port(agent.log()), "/v1/traces", "application/json", body);
  ASSERT_EQ(reply.rfind("HTTP/1.1 200", 0), 0u) << reply;
  ASSERT_TRUE(wait_until([&] { return !agent.traces().empty(); })) << agent.log();
  ASSERT_EQ(agent.traces().size(), 1u);
  const auto t = agent.traces()[0];
  EXPECT_EQ(t["trace_id"], trace);
  ASSERT_EQ(t["events"].size(), 1u) << t.dump();
  EXPECT_EQ(t["events"][0]["id"], "00000000000000a1");
  ASSERT_EQ(t["events"][0]["children"].size(), 1u) << t.dump();
  const auto& span = t["events"][0]["children"][0];
  EXPECT_EQ(span["id"], "eee19b7ec3c1b174");
  EXPECT_EQ(span["input"], "write to [REDACTED:emails]") << span.dump();
  EXPECT_EQ(agent.signal_and_wait(SIGTERM), 0) << agent.log();
}

TEST_F(AgentProcessTest, SocketFilesGetTheConfiguredMode) {
  AgentProcess agent(dir_, {"SIDETRACE_LISTEN_SOCKET_MODE=0600"});
  agent.start();
  ASSERT_TRUE(agent.wait_ready()) << agent.log();
  struct stat st {};
  ASSERT_EQ(::stat(agent.stream_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(agent.signal_and_wait(SIGINT), 0);
}

TEST_F(AgentProcessTest, StopSignalDuringStartIsACleanStop) {
  // The store's lock file appears when start-up opens the store, before the
  // sockets and threads: a SIGTERM then (as from `systemctl stop` right after
  // a start) must still end in an orderly stop, not the signal's default.
  AgentProcess agent(dir_);
  agent.start();
  const fs::path lock = dir_ / "data" / "store" / "LOCK";
  // A short poll interval: the window is a few ms.
  wait_until([&] { return fs::exists(lock) || agent.exited(); }, 15s, 100us);
  ASSERT_TRUE(fs::exists(lock)) << agent.log();
  EXPECT_EQ(agent.signal_and_wait(SIGTERM), 0) << agent.log();
  EXPECT_NE(agent.log().find("sidetrace stopped"), std::string::npos) << agent.log();
  EXPECT_FALSE(fs::exists(agent.stream_path()));
}

TEST_F(AgentProcessTest, ReplacesAStaleSocketButRefusesALiveOne) {
  // A stale socket file: bound, then its owner went away.
  fs::create_directories(dir_);
  std::string path = (dir_ / "agent.sock").string();
  {
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    ::close(fd);
  }
  AgentProcess first(dir_);
  first.start();
  ASSERT_TRUE(first.wait_ready()) << first.log();
  ASSERT_FALSE(first.exited()) << first.log();

  // A second agent on the same socket path must not steal it.
  AgentProcess second(dir_ / "second", {"SIDETRACE_LISTEN_UNIX_STREAM=" + path});
  second.start();
  ASSERT_TRUE(wait_until([&] { return second.exited(); })) << second.log();
  EXPECT_NE(second.exit_status(), 0);
  EXPECT_TRUE(fs::exists(path));
  EXPECT_EQ(first.signal_and_wait(SIGTERM), 0);
}

TEST_F(AgentProcessTest, PersistedEventsSurviveKill9) {
  {
    // A long quiet period: the trace cannot be emitted before the kill.
    AgentProcess agent(dir_, {"SIDETRACE_TRACE_QUIET_PERIOD_MS=600000"});
    agent.start();
    ASSERT_TRUE(agent.wait_ready()) << agent.log();
    std::string lines;
    for (int i = 0; i < 50; ++i) {
      lines += R"({"kind":"event","trace_id":"crash","id":"e)" + std::to_string(i) +
               R"(","type":"TOOL","input":"x","latency_ms":1})" + "\n";
    }
    Result r = run({"emit", "--endpoint", "unix://" + agent.stream_path(), "--stdin"}, {}, lines);
    ASSERT_EQ(r.status, 0) << r.err;
    std::string addr = agent.admin_addr();
    ASSERT_FALSE(addr.empty()) << agent.log();
    ASSERT_TRUE(wait_until([&] {
      unsigned st = 0;
      std::string body, err;
      return sidetrace::agent::admin_get(addr, "/metrics", &st, &body, &err) &&
             body.find("sidetrace_persisted_messages_total 50\n") != std::string::npos;
    }));
    agent.kill9();
  }
  AgentProcess again(dir_);
  again.start();
  ASSERT_TRUE(again.wait_ready()) << again.log();
  ASSERT_TRUE(wait_until([&] { return !again.traces().empty(); })) << again.log();
  auto t = again.traces().at(0);
  EXPECT_EQ(t["trace_id"], "crash");
  EXPECT_EQ(t["events"].size(), 50u);
  EXPECT_EQ(again.signal_and_wait(SIGTERM), 0);
}

// Reads sidetrace_persisted_messages_total from the admin endpoint; -1 if unreachable.
long long persisted_count(const std::string& addr) {
  unsigned st = 0;
  std::string body, err;
  if (!sidetrace::agent::admin_get(addr, "/metrics", &st, &body, &err)) return -1;
  const std::string key = "sidetrace_persisted_messages_total ";
  size_t p = body.find("\n" + key);
  if (p == std::string::npos) return -1;
  return std::stoll(body.substr(p + 1 + key.size()));
}

// Streams messages over one Unix stream connection until stopped; message n is
// event e<n%10> of trace <prefix>-t<n/10>.
class StreamEmitter {
 public:
  StreamEmitter(const std::string& path, std::string prefix) : prefix_(std::move(prefix)) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    thread_ = std::thread([this] { loop(); });
  }
  ~StreamEmitter() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }
  bool connected() const { return connected_; }

 private:
  void loop() {
    for (uint64_t n = 0; connected_ && !stop_; ++n) {
      nlohmann::json m = {{"v", 1},
                          {"kind", "event"},
                          {"trace_id", prefix_ + "-t" + std::to_string(n / 10)},
                          {"id", "e" + std::to_string(n % 10)},
                          {"type", "TOOL"},
                          {"input", std::string(200, 'x')},
                          {"latency_ms", 1}};
      std::vector<uint8_t> bytes = nlohmann::json::to_msgpack(m);
      size_t off = 0;
      while (off < bytes.size() && !stop_) {
        ssize_t w = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
        if (w <= 0) return;  // the agent died
        off += static_cast<size_t>(w);
      }
    }
  }
  std::string prefix_;
  int fd_ = -1;
  bool connected_ = false;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

TEST_F(AgentProcessTest, KillNineLoopLosesNoPersistedEvent) {
  constexpr int kRounds = 5;
  std::mt19937 rng(20261127);
  std::vector<long long> persisted_at_kill;
  for (int round = 0; round < kRounds; ++round) {
    AgentProcess agent(dir_, {"SIDETRACE_TRACE_QUIET_PERIOD_MS=200"});
    agent.start();
    ASSERT_TRUE(agent.wait_ready()) << agent.log();
    std::string addr = agent.admin_addr();
    long long base = persisted_count(addr);
    ASSERT_GE(base, 0) << addr << "\n" << agent.log();
    long long target = std::uniform_int_distribution<long long>(200, 5000)(rng);
    StreamEmitter emitter(agent.stream_path(), "r" + std::to_string(round));
    ASSERT_TRUE(emitter.connected());
    long long seen = 0;
    ASSERT_TRUE(wait_until(
        [&] {
          seen = persisted_count(addr) - base;
          return seen >= target;
        },
        60s))
        << "round " << round << ": " << seen << " of " << target << " persisted\n"
        << agent.log();
    agent.kill9();
    persisted_at_kill.push_back(seen);
  }

  // Drain: a clean run emits whatever was persisted but not yet emitted.
  AgentProcess agent(dir_, {"SIDETRACE_TRACE_QUIET_PERIOD_MS=50"});
  agent.start();
  ASSERT_TRUE(agent.wait_ready()) << agent.log();
  // Latest revision of every trace.
  std::map<std::string, nlohmann::json> latest;
  auto complete = [&] {
    latest.clear();
    for (const auto& t : agent.traces()) {
      std::string id = t["trace_id"];
      if (!latest.count(id) || latest[id]["revision"] < t["revision"]) latest[id] = t;
      std::set<std::string> ids;
      for (const auto& e : t["events"]) {
        EXPECT_TRUE(ids.insert(e["id"].get<std::string>()).second) << "twice in one revision";
      }
    }
    for (int round = 0; round < kRounds; ++round) {
      for (long long n = 0; n < persisted_at_kill[round]; ++n) {
        std::string tid = "r" + std::to_string(round) + "-t" + std::to_string(n / 10);
        auto it = latest.find(tid);
        if (it == latest.end()) return false;
        bool found = false;
        for (const auto& e : it->second["events"])
          found = found || e["id"] == "e" + std::to_string(n % 10);
        if (!found) return false;
      }
    }
    return true;
  };
  EXPECT_TRUE(wait_until(complete, 60s)) << agent.log();
  EXPECT_EQ(agent.signal_and_wait(SIGTERM), 0);
}

TEST_F(AgentProcessTest, BadConfigExitsNonZeroNamingKeyFileAndLine) {
  fs::path cfg = dir_ / "bad.toml";
  std::ofstream(cfg) << "data_dir = \"/tmp/x\"\n[trace]\nquiet_period_ms = \"soon\"\n";
  Result r = run({"agent", "--config", cfg.string()});
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("trace.quiet_period_ms"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(cfg.string() + ":3"), std::string::npos) << r.err;

  std::ofstream(cfg) << "[upstream]\nendpoint = \"x\"\nbogus = 1\n";
  r = run({"config", "check", cfg.string()});
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("upstream.bogus"), std::string::npos) << r.err;

  r = run({"agent"}, {"SIDETRACE_BUFFER_MAX_BYTES=lots"});
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("SIDETRACE_BUFFER_MAX_BYTES"), std::string::npos) << r.err;
}

TEST_F(AgentProcessTest, ConfigCheckPrintsTheEffectiveConfigWithSecretsMasked) {
  fs::path cfg = dir_ / "good.toml";
  std::ofstream(cfg) << "[upstream]\nendpoint = \"https://u:pw@collector:4318\"\n"
                        "headers = { Authorization = \"Bearer topsecret\" }\n";
  Result r = run({"config", "check", cfg.string()}, {"SIDETRACE_TRACE_MAX_OPEN_S=42"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("max_open_s = 42"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("topsecret"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find(":pw@"), std::string::npos) << r.out;
}

TEST_F(AgentProcessTest, StatusAndHealthEndpoints) {
  AgentProcess agent(dir_);
  agent.start();
  ASSERT_TRUE(agent.wait_ready()) << agent.log();
  std::string addr = agent.admin_addr();
  ASSERT_FALSE(addr.empty()) << agent.log();
  unsigned st = 0;
  std::string body, err;
  ASSERT_TRUE(sidetrace::agent::admin_get(addr, "/healthz", &st, &body, &err)) << err;
  EXPECT_EQ(st, 200u);
  ASSERT_TRUE(sidetrace::agent::admin_get(addr, "/readyz", &st, &body, &err)) << err;
  EXPECT_EQ(st, 200u) << body;
  Result r = run({"status", "--admin", addr});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("state                  ready"), std::string::npos) << r.out;
  r = run({"status", "--admin", "127.0.0.1:1"});
  EXPECT_EQ(r.status, 3);
  EXPECT_EQ(agent.signal_and_wait(SIGTERM), 0);
}

TEST_F(AgentProcessTest, ReloadAppliesGoodConfigRefusesBadAndLosesNothing) {
  fs::path cfg = dir_ / "agent.toml";
  std::ofstream(cfg) << "[log]\nlevel = \"info\"\n";
  AgentProcess agent(dir_, {}, {"--config", cfg.string()});
  agent.start();
  ASSERT_TRUE(agent.wait_ready()) << agent.log();
  std::string endpoint = "unix://" + agent.stream_path();
  auto send = [&](const std::string& trace) {
    Result r = run({"emit", "--endpoint", endpoint, "--kind", "event", "--trace-id", trace, "--id",
                    "e", "--type", "TOOL", "--latency-ms", "1"});
    ASSERT_EQ(r.status, 0) << r.err;
  };
  send("before");

  // A good change, by SIGHUP: applied, and named in the log.
  std::ofstream(cfg) << "[log]\nlevel = \"debug\"\n[upstream]\nbatch_max_events = 10\n";
  ::kill(agent.pid(), SIGHUP);
  ASSERT_TRUE(wait_until([&] {
    return agent.log().find("reload: log.level applied") != std::string::npos;
  })) << agent.log();
  send("between");

  // A key that needs a restart is named as such.
  std::ofstream(cfg) << "[log]\nlevel = \"debug\"\n[listen]\nmax_connections = 7\n";
  Result r = run({"reload", "--admin", agent.admin_addr()});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(
      agent.log().find("listen.max_connections changed but takes effect only after a restart"),
      std::string::npos)
      << agent.log();

  // A bad file is refused with the reason; the agent keeps serving.
  std::ofstream(cfg) << "[log]\nlevel = \"loud\"\n";
  r = run({"reload", "--admin", agent.admin_addr()});
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("log.level"), std::string::npos) << r.err;
  ASSERT_TRUE(wait_until([&] { return agent.log().find("reload refused") != std::string::npos; }));
  send("after");
  ASSERT_TRUE(wait_until([&] { return agent.traces().size() >= 3; })) << agent.log();
  EXPECT_EQ(agent.signal_and_wait(SIGTERM), 0);
}

TEST_F(AgentProcessTest, SecretsAreRedactedBeforeTheyAreStored) {
  fs::path cfg = dir_ / "agent.toml";
  std::ofstream(cfg) << "[redact]\ndetectors = [\"emails\", \"bearer_tokens\"]\n"
                        "[[redact.rules]]\nname = \"ticket\"\npattern = \"TICKET-[0-9]+\"\n";
  AgentProcess agent(dir_, {}, {"--config", cfg.string()});
  agent.start();
  ASSERT_TRUE(agent.wait_ready()) << agent.log();
  Result r = run({"emit", "--endpoint", "unix://" + agent.stream_path(), "--kind", "event",
                  "--trace-id", "secret", "--id", "e", "--type", "TOOL", "--input",
                  "mail bob@example.com about TICKET-1234", "--output",
                  "Authorization: Bearer abcdef0123456789abcdef", "--latency-ms", "1"});
  ASSERT_EQ(r.status, 0) << r.err;
  ASSERT_TRUE(wait_until([&] { return !agent.traces().empty(); })) << agent.log();
  EXPECT_EQ(agent.signal_and_wait(SIGTERM), 0);
  // Neither the emitted trace nor any file of the store holds the secrets.
  std::string doc = agent.traces().at(0).dump();
  EXPECT_EQ(doc.find("bob@example.com"), std::string::npos) << doc;
  EXPECT_EQ(doc.find("TICKET-1234"), std::string::npos) << doc;
  EXPECT_EQ(doc.find("abcdef0123456789abcdef"), std::string::npos) << doc;
  EXPECT_NE(doc.find("[REDACTED:ticket]"), std::string::npos) << doc;
  for (const auto& f : fs::recursive_directory_iterator(dir_ / "data" / "store")) {
    if (!f.is_regular_file()) continue;
    EXPECT_EQ(slurp(f.path()).find("bob@example.com"), std::string::npos) << f.path();
  }
}

TEST_F(AgentProcessTest, BadRedactionRuleIsAConfigurationError) {
  fs::path cfg = dir_ / "agent.toml";
  std::ofstream(cfg) << "[[redact.rules]]\nname = \"broken\"\npattern = \"([a-\"\n";
  Result r = run({"config", "check", cfg.string()});
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.err.find("broken"), std::string::npos) << r.err;
}

// Sends `request` as it is to `addr` (host:port) and returns the response's
// status code (0 when none was read). The request should close the connection.
unsigned raw_status(const std::string& addr, const std::string& request) {
  std::string host;
  unsigned short port = 0;
  if (!sidetrace::agent::split_host_port(addr, &host, &port)) return 0;
  boost::asio::io_context io;
  boost::asio::ip::tcp::socket s(io);
  s.connect({boost::asio::ip::make_address(host), port});
  boost::asio::write(s, boost::asio::buffer(request));
  std::string got;
  boost::system::error_code ec;
  char buf[512];
  while (!ec) {
    size_t n = s.read_some(boost::asio::buffer(buf), ec);
    got.append(buf, n);
  }
  if (!got.starts_with("HTTP/1.1 ") || got.size() < 12) return 0;
  return static_cast<unsigned>(std::stoul(got.substr(9, 3)));
}

TEST_F(AgentProcessTest, AdminRefusesRebindingAndCrossSiteRequests) {
  AgentProcess agent(dir_);
  const std::string addr = start_for_admin(agent);
  ASSERT_FALSE(addr.empty());
  // A page reached through DNS rebinding.
  EXPECT_EQ(raw_status(addr,
                       "GET /api/traces HTTP/1.1\r\nHost: evil.example.com:7718\r\n"
                       "Connection: close\r\n\r\n"),
            421u);
  // A plain form on another site, and one without an Origin.
  for (const char* path : {"/deadletter/purge", "/reload"}) {
    EXPECT_EQ(raw_status(addr, std::string("POST ") + path + " HTTP/1.1\r\nHost: " + addr +
                                   "\r\nOrigin: http://evil.example.com\r\n"
                                   "Content-Type: application/x-www-form-urlencoded\r\n"
                                   "Content-Length: 3\r\nConnection: close\r\n\r\nx=1"),
              403u)
        << path;
    EXPECT_EQ(raw_status(addr, std::string("POST ") + path + " HTTP/1.1\r\nHost: " + addr +
                                   "\r\nContent-Type: text/plain\r\n"
                                   "Content-Length: 3\r\nConnection: close\r\n\r\nx=1"),
              403u)
        << path;
  }
  EXPECT_EQ(agent.log().find("reload requested"), std::string::npos) << agent.log();
  EXPECT_EQ(raw_status(addr,
                       "GET /api/traces HTTP/1.1\r\nHost: localhost\r\n"
                       "Connection: close\r\n\r\n"),
            200u);
  EXPECT_EQ(agent.signal_and_wait(SIGTERM), 0);
}

TEST_F(AgentProcessTest, AdminBeyondLoopbackWithoutATokenRefusesToStart) {
  const std::vector<std::string> env = {
      "SIDETRACE_DATA_DIR=" + (dir_ / "data").string(),
      "SIDETRACE_LISTEN_UNIX_STREAM=" + (dir_ / "agent.sock").string(),
      "SIDETRACE_LISTEN_UNIX_DGRAM=",
      "SIDETRACE_LISTEN_UDP=",
      "SIDETRACE_LISTEN_OTLP_HTTP=",
      "SIDETRACE_ADMIN_LISTEN=0.0.0.0:0"};
  Result r = run({"agent"}, env);
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("admin.token"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("0.0.0.0:0"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir_ / "agent.sock"));
  EXPECT_FALSE(fs::exists(dir_ / "data" / "store"));

  // A token file that cannot be read stops it too, naming that key.
  std::vector<std::string> with_file = env;
  with_file.push_back("SIDETRACE_ADMIN_TOKEN_FILE=" + (dir_ / "missing-token").string());
  r = run({"agent"}, with_file);
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("admin.token_file"), std::string::npos) << r.err;
}

TEST_F(AgentProcessTest, ToolsWorkAgainstAnAgentWithAToken) {
  const std::string token = "st-admin-0123456789abcdef";
  fs::path cfg = dir_ / "agent.toml";
  std::ofstream(cfg) << "[log]\nlevel = \"info\"\n";
  AgentProcess agent(dir_, {"SIDETRACE_ADMIN_TOKEN=" + token}, {"--config", cfg.string()});
  const std::string addr = start_for_admin(agent);
  ASSERT_FALSE(addr.empty());

  // Probes need no token; everything else does.
  unsigned st = 0;
  std::string body, err;
  ASSERT_TRUE(sidetrace::agent::admin_get(addr, "/healthz", &st, &body, &err)) << err;
  EXPECT_EQ(st, 200u);
  ASSERT_TRUE(sidetrace::agent::admin_get(addr, "/readyz", &st, &body, &err)) << err;
  EXPECT_EQ(st, 200u);
  ASSERT_TRUE(sidetrace::agent::admin_get(addr, "/ui", &st, &body, &err)) << err;
  EXPECT_EQ(st, 200u);
  for (const char* path : {"/status", "/metrics", "/api/traces", "/deadletter"}) {
    ASSERT_TRUE(sidetrace::agent::admin_get(addr, path, &st, &body, &err)) << err;
    EXPECT_EQ(st, 401u) << path;
  }
  ASSERT_TRUE(sidetrace::agent::admin_get(addr, "/status", &st, &body, &err, token)) << err;
  EXPECT_EQ(st, 200u);

  // The tools without the token say what is missing.
  Result r = run({"status", "--admin", addr});
  EXPECT_EQ(r.status, 3) << r.out;
  EXPECT_NE(r.err.find("SIDETRACE_ADMIN_TOKEN"), std::string::npos) << r.err;
  r = run({"reload", "--admin", addr});
  EXPECT_EQ(r.status, 3) << r.out;
  EXPECT_EQ(agent.log().find("reload: no change"), std::string::npos) << agent.log();

  // With the token from the environment, or from a file.
  const std::string env_token = "SIDETRACE_ADMIN_TOKEN=" + token;
  r = run({"status", "--admin", addr}, {env_token});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("state                  ready"), std::string::npos) << r.out;
  fs::path token_file = dir_ / "admin-token";
  std::ofstream(token_file) << token << "\n";
  r = run({"status", "--admin", addr}, {"SIDETRACE_ADMIN_TOKEN_FILE=" + token_file.string()});
  EXPECT_EQ(r.status, 0) << r.err;

  r = run({"reload", "--admin", addr}, {env_token});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("no change"), std::string::npos) << r.out;

  // deadletter goes through the agent, which holds the store.
  const std::vector<std::string> dl_env = {"SIDETRACE_DATA_DIR=" + (dir_ / "data").string(),
                                           env_token};
  r = run({"deadletter", "list", "--set", "admin.listen=" + addr}, dl_env);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("0 dead-lettered batch(es)"), std::string::npos) << r.out;
  r = run({"deadletter", "purge", "--set", "admin.listen=" + addr}, dl_env);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("purged 0 dead-lettered batch(es)"), std::string::npos) << r.out;
  r = run({"deadletter", "purge", "--set", "admin.listen=" + addr},
          {"SIDETRACE_DATA_DIR=" + (dir_ / "data").string()});
  EXPECT_NE(r.status, 0) << r.out;
  EXPECT_NE(r.err.find("admin token"), std::string::npos) << r.err;

  // tail prints a finished trace.
  r = run({"emit", "--endpoint", "unix://" + agent.stream_path(), "--kind", "event", "--trace-id",
           "tokened", "--id", "e", "--type", "TOOL", "--name", "lookup", "--latency-ms", "1"});
  ASSERT_EQ(r.status, 0) << r.err;
  ASSERT_TRUE(wait_until([&] { return !agent.traces().empty(); })) << agent.log();
  r = run({"tail", "--admin", addr, "-n", "1", "--count", "1", "--no-color"}, {env_token});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("trace tokened"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("TOOL lookup"), std::string::npos) << r.out;
  r = run({"tail", "--admin", addr, "-n", "1", "--count", "1", "--no-color"});
  EXPECT_EQ(r.status, 3) << r.out;
  EXPECT_NE(r.err.find("401"), std::string::npos) << r.err;

  EXPECT_EQ(agent.signal_and_wait(SIGTERM), 0);
}

// A trace the assembler set aside is listed with its reason, and released:
// from the store while no agent runs, through the admin endpoint while one
// does, which then builds it.
TEST_F(AgentProcessTest, QuarantinedTracesAreListedAndReleasedThroughTheCli) {
  const std::string data = (dir_ / "data").string();
  {
    // A stored trace with a quarantine record, as the assembler leaves it.
    buffer::StoreOptions so;
    so.data_dir = data;
    std::unique_ptr<buffer::Store> store;
    ASSERT_TRUE(buffer::Store::open(so, &store).ok());
    ipc::Message m;
    m.trace_id = "stuck";
    m.id = "e1";
    m.recv_ns = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                          std::chrono::system_clock::now().time_since_epoch())
                                          .count());
    m.raw = ipc::testing::MapBuilder()
                .uint("v", 1)
                .str("kind", "event")
                .str("trace_id", "stuck")
                .str("id", "e1")
                .str("type", "TOOL")
                .str("name", "lookup")
                .build();
    std::vector<buffer::Committed> committed;
    ASSERT_TRUE(store->append(std::span<const ipc::Message>(&m, 1), &committed).ok());
    for (const char* id : {"stuck", "other"}) {
      ASSERT_TRUE(store
                      ->meta_put(std::string(trace::kQuarantinePrefix) + id,
                                 "building failed 3 times: bad input")
                      .ok());
    }
  }
  const std::vector<std::string> env = {"SIDETRACE_DATA_DIR=" + data};
  Result r = run({"quarantine", "list"}, env);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("stuck  reason=building failed 3 times: bad input"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("2 trace(s) set aside"), std::string::npos) << r.out;
  r = run({"quarantine", "release", "other"}, env);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("released trace other"), std::string::npos) << r.out;
  r = run({"quarantine", "release", "other"}, env);
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.err.find("trace other is not set aside"), std::string::npos) << r.err;

  AgentProcess agent(dir_);
  agent.start();
  ASSERT_TRUE(agent.wait_ready()) << agent.log();
  const std::string addr = agent.admin_addr();
  const std::vector<std::string> via_agent = {"SIDETRACE_DATA_DIR=" + data,
                                              "SIDETRACE_ADMIN_LISTEN=" + addr};
  // Set aside, it is not built.
  EXPECT_NE(agent.log().find("1 trace(s) set aside earlier are not built"), std::string::npos)
      << agent.log();
  r = run({"quarantine", "list"}, via_agent);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("1 trace(s) set aside"), std::string::npos) << r.out;
  r = run({"quarantine", "release", "no such trace"}, via_agent);
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.err.find("trace no such trace is not set aside"), std::string::npos) << r.err;
  r = run({"quarantine", "release", "stuck"}, via_agent);
  EXPECT_EQ(r.status, 0) << r.err;
  ASSERT_TRUE(wait_until([&] {
    for (const auto& t : agent.traces())
      if (t["trace_id"] == "stuck") return true;
    return false;
  })) << agent.log();
  r = run({"quarantine", "list"}, via_agent);
  EXPECT_NE(r.out.find("0 trace(s) set aside"), std::string::npos) << r.out;
  EXPECT_EQ(agent.signal_and_wait(SIGTERM), 0);
}

// Dead letters in a running agent: a replay and a purge through the admin
// endpoint answer 202 at once with an operation that ends with the counts;
// the CLI follows them and prints the result as it always did. A reload the
// agent refuses is an operation that failed, with the reason.
TEST_F(AgentProcessTest, DeadLetterReplayPurgeAndReloadAreOperations) {
  const std::string data = (dir_ / "data").string();
  // Enough records for several pages (upstream::detail::kDeadLetterPage).
  constexpr size_t kRecords = 40;
  auto add_deadletters = [&] {
    buffer::StoreOptions so;
    so.data_dir = data;
    std::unique_ptr<buffer::Store> store;
    ASSERT_TRUE(buffer::Store::open(so, &store).ok());
    for (size_t i = 0; i < kRecords; ++i) {
      upstream::detail::DeadLetterRecord r;
      r.ts_ns = 1 + i;
      r.http_status = 400;
      r.reason = "400 Bad Request";
      r.key = upstream::detail::new_idempotency_key();
      r.trace_ids = {"t" + std::to_string(i)};
      r.docs = {R"({"trace_id":"t)" + std::to_string(i) + R"("})"};
      uint64_t evicted = 0, docs = 0;
      ASSERT_TRUE(
          upstream::detail::deadletter_add(*store, r, 1 << 30, 100000, &evicted, &docs).ok());
    }
  };
  add_deadletters();
  fs::path cfg = dir_ / "agent.toml";
  // An upstream that never answers: the replayed batches wait in delivery.
  std::ofstream(cfg) << "[upstream]\nendpoint = \"http://127.0.0.1:1/v1/traces\"\n";
  AgentProcess agent(dir_, {}, {"--config", cfg.string()});
  const std::string addr = start_for_admin(agent);
  ASSERT_FALSE(addr.empty());

  unsigned st = 0;
  std::string body, err;
  ASSERT_TRUE(sidetrace::agent::admin_request(addr, "POST", "/deadletter/replay", &st, &body, &err))
      << err;
  ASSERT_EQ(st, 202u) << body;
  auto op = nlohmann::json::parse(body);
  EXPECT_EQ(op.at("kind"), "deadletter_replay");
  const std::string id = op.at("id");
  ASSERT_TRUE(sidetrace::agent::admin_get(addr, "/healthz", &st, &body, &err)) << err;
  EXPECT_EQ(st, 200u);
  auto state_of = [&](const std::string& op_id) {
    unsigned s = 0;
    std::string b, e;
    if (!sidetrace::agent::admin_get(addr, "/operations/" + op_id, &s, &b, &e) || s != 200) {
      return nlohmann::json();
    }
    return nlohmann::json::parse(b);
  };
  ASSERT_TRUE(wait_until([&] { return state_of(id).value("state", "running") != "running"; }));
  op = state_of(id);
  EXPECT_EQ(op.at("state"), "ok") << op.dump();
  EXPECT_EQ(op.at("done"), kRecords);
  EXPECT_EQ(op.at("total"), kRecords);
  EXPECT_EQ(op.at("message"), "replayed 40 dead-lettered batch(es)");

  const std::vector<std::string> via_agent = {"SIDETRACE_DATA_DIR=" + data,
                                              "SIDETRACE_ADMIN_LISTEN=" + addr};
  Result r = run({"deadletter", "list"}, via_agent);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("0 dead-lettered batch(es)"), std::string::npos) << r.out;
  r = run({"deadletter", "replay"}, via_agent);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("replayed 0 dead-lettered batch(es)\n"), std::string::npos) << r.out;

  // A reload that is refused: the operation failed, and says why.
  std::ofstream(cfg) << "[log]\nlevel = \"loud\"\n";
  ASSERT_TRUE(sidetrace::agent::admin_request(addr, "POST", "/reload", &st, &body, &err)) << err;
  ASSERT_EQ(st, 202u) << body;
  const std::string reload_id = nlohmann::json::parse(body).at("id");
  ASSERT_TRUE(
      wait_until([&] { return state_of(reload_id).value("state", "running") != "running"; }));
  op = state_of(reload_id);
  EXPECT_EQ(op.at("state"), "failed") << op.dump();
  EXPECT_NE(op.at("message").get<std::string>().find("log.level"), std::string::npos) << op.dump();
  ASSERT_TRUE(sidetrace::agent::admin_get(addr, "/operations", &st, &body, &err)) << err;
  EXPECT_EQ(nlohmann::json::parse(body).at("operations").size(), 3u) << body;
  EXPECT_EQ(agent.signal_and_wait(SIGTERM), 0);

  // A purge: the same through the CLI, which follows the operation.
  add_deadletters();
  std::ofstream(cfg) << "[log]\nlevel = \"info\"\n";
  agent.start();
  ASSERT_TRUE(agent.wait_ready()) << agent.log();
  const std::vector<std::string> via_again = {"SIDETRACE_DATA_DIR=" + data,
                                              "SIDETRACE_ADMIN_LISTEN=" + agent.admin_addr()};
  r = run({"deadletter", "purge"}, via_again);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("purged 40 dead-lettered batch(es)\n"), std::string::npos) << r.out;
  r = run({"deadletter", "list"}, via_again);
  EXPECT_NE(r.out.find("0 dead-lettered batch(es)"), std::string::npos) << r.out;
  EXPECT_EQ(agent.signal_and_wait(SIGTERM), 0);
}

TEST_F(AgentProcessTest, EmitNeverHangsWithoutAnAgent) {
  auto t0 = std::chrono::steady_clock::now();
  Result r = run({"emit", "--endpoint", "unix://" + (dir_ / "nobody.sock").string(), "--kind",
                  "event", "--trace-id", "t", "--id", "e", "--type", "TOOL"});
  EXPECT_NE(r.status, 0);
  r = run({"emit", "--endpoint", "udp://127.0.0.1:9", "--kind", "event", "--trace-id", "t", "--id",
           "e", "--type", "TOOL"});
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
}

}  // namespace

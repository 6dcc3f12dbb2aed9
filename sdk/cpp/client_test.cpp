// The C++ SDK against real sockets (Unix stream, Unix datagram, UDP) whose
// received bytes are decoded with msgpack.
#include "sidetrace/client.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

// Allocation failure injection: while g_fail_at >= 0, the g_fail_at-th
// allocation (counting from 0) made by this thread throws std::bad_alloc.
// The replacement operators allocate with malloc and release with free, which
// GCC would take for a mismatch where it inlines them.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
namespace {
thread_local long g_fail_at = -1;
thread_local long g_allocations = 0;
thread_local bool g_failed = false;
}  // namespace

void* operator new(std::size_t n) {
  if (g_fail_at >= 0 && g_allocations++ == g_fail_at) {
    g_failed = true;
    throw std::bad_alloc();
  }
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  return operator new(n);
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}

// A type whose msgpack adaptor throws.
struct Explodes {};
namespace msgpack {
MSGPACK_API_VERSION_NAMESPACE(MSGPACK_DEFAULT_API_NS) {
  namespace adaptor {
  template <>
  struct pack<Explodes> {
    template <typename Stream>
    packer<Stream>& operator()(packer<Stream>&, const Explodes&) const {
      throw std::runtime_error("cannot pack");
    }
  };
  }  // namespace adaptor
}
}  // namespace msgpack

namespace sidetrace::client {
namespace {

// Runs `op` with the n-th allocation of this thread failing, for n = 0, 1, ...
// until a run has no allocation left to fail. Returns the number of runs in
// which an allocation failed.
int with_each_allocation_failing(const std::function<void()>& op) {
  for (int n = 0;; ++n) {
    g_allocations = 0;
    g_failed = false;
    g_fail_at = n;
    op();
    g_fail_at = -1;
    if (!g_failed) return n;
  }
}

using namespace std::chrono_literals;

bool is_hex(const std::string& s, size_t n) {
  return s.size() == n && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout = 5s) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

// One received message: its top-level keys with their decoded values.
struct Msg {
  std::shared_ptr<msgpack::object_handle> handle;
  std::map<std::string, msgpack::object> keys;
  bool has(const std::string& k) const { return keys.count(k) > 0; }
  std::string str(const std::string& k) const {
    auto it = keys.find(k);
    return it == keys.end() ? std::string() : it->second.as<std::string>();
  }
  uint64_t u64(const std::string& k) const { return keys.at(k).as<uint64_t>(); }
};

// Why the agent would reject `m`, or "": the checks of ipc/event.cpp
// (validate) on a decoded message.
std::string protocol_problem(const Msg& m) {
  using msgpack::type::object_type;
  const msgpack::object& top = m.handle->get();
  if (top.type != object_type::MAP) return "not_map";
  for (uint32_t i = 0; i < top.via.map.size; ++i) {
    if (top.via.map.ptr[i].key.type != object_type::STR) return "key_not_string";
  }
  auto type_of = [&](const char* k) {
    auto it = m.keys.find(k);
    return it == m.keys.end() ? object_type::NIL : it->second.type;
  };
  const std::string kind = type_of("kind") == object_type::STR ? m.str("kind") : "";
  if (kind != "trace" && kind != "start" && kind != "end" && kind != "event" && kind != "feedback")
    return "bad_kind";
  if (type_of("v") != object_type::POSITIVE_INTEGER || m.u64("v") != 1) return "bad_version";
  std::vector<const char*> required = {"trace_id"};
  if (kind == "start" || kind == "event") required = {"trace_id", "id", "type"};
  if (kind == "end") required = {"trace_id", "id"};
  for (const char* k : required) {
    if (type_of(k) == object_type::NIL) return std::string("missing ") + k;
  }
  for (const char* k : {"trace_id", "id", "parent_id", "target_id", "type"}) {
    if (type_of(k) == object_type::NIL) continue;
    if (type_of(k) != object_type::STR) return std::string(k) + ": wrong_type";
    const size_t n = m.keys.at(k).via.str.size;
    if (n < 1 || n > 128) return std::string(k) + ": bad_value length " + std::to_string(n);
  }
  for (const char* k : {"name", "error", "conversation_id", "session_id", "interaction_id",
                        "channel_id", "tag", "text"}) {
    if (type_of(k) != object_type::NIL && type_of(k) != object_type::STR)
      return std::string(k) + ": wrong_type";
  }
  if (type_of("status") != object_type::NIL && m.str("status") != "ok" &&
      m.str("status") != "error")
    return "status: bad_value";
  for (const char* k : {"ts", "end_ts", "latency_ms"}) {
    if (type_of(k) != object_type::NIL && type_of(k) != object_type::POSITIVE_INTEGER)
      return std::string(k) + ": wrong_type or negative";
  }
  if (type_of("latency_ms") != object_type::NIL &&
      m.u64("latency_ms") > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    return "latency_ms: bad_value";
  const auto score = type_of("score");
  if (score != object_type::NIL && score != object_type::POSITIVE_INTEGER &&
      score != object_type::NEGATIVE_INTEGER && score != object_type::FLOAT64 &&
      score != object_type::FLOAT32)
    return "score: wrong_type";
  for (const char* k : {"attrs", "user", "metadata"}) {
    if (type_of(k) != object_type::NIL && type_of(k) != object_type::MAP)
      return std::string(k) + ": wrong_type";
  }
  return "";
}

std::vector<std::string> protocol_problems(const std::vector<Msg>& msgs) {
  std::vector<std::string> out;
  for (const Msg& m : msgs) {
    std::string p = protocol_problem(m);
    if (!p.empty()) out.push_back(p);
  }
  return out;
}

// A listening socket standing in for the agent.
class FakeAgent {
 public:
  enum Kind { kStream, kDgram, kUdp };

  FakeAgent(Kind kind, std::string path, bool read = true) : kind_(kind), path_(std::move(path)) {
    if (kind == kUdp) {
      fd_ = socket(AF_INET, SOCK_DGRAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0)
        throw std::runtime_error("bind");
      socklen_t len = sizeof(a);
      getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
      endpoint_ = "udp://127.0.0.1:" + std::to_string(ntohs(a.sin_port));
    } else {
      fd_ = socket(AF_UNIX, kind == kStream ? SOCK_STREAM : SOCK_DGRAM, 0);
      sockaddr_un a{};
      a.sun_family = AF_UNIX;
      std::snprintf(a.sun_path, sizeof(a.sun_path), "%s", path_.c_str());
      if (bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0)
        throw std::runtime_error("bind");
      if (kind == kStream) listen(fd_, 16);
      endpoint_ = (kind == kStream ? "unix://" : "unixgram://") + path_;
    }
    if (read) thread_ = std::thread([this] { run(); });
  }

  ~FakeAgent() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    for (int c : conns_)
      close(c);
    close(fd_);
    if (kind_ != kUdp) unlink(path_.c_str());
  }

  const std::string& endpoint() const { return endpoint_; }
  int connections() const { return connections_; }
  int open_connections() const { return open_; }
  // Shuts every connection for reading and closes it, as the agent does with
  // one left idle.
  void close_connections() { close_conns_ = true; }

  std::vector<Msg> messages() const {
    std::lock_guard lk(mu_);
    return messages_;
  }
  bool wait_count(size_t n, std::chrono::milliseconds timeout = 5s) const {
    return wait_until([&] { return messages().size() >= n; }, timeout);
  }

 private:
  void add(msgpack::object_handle oh) {
    Msg m;
    m.handle = std::make_shared<msgpack::object_handle>(std::move(oh));
    const msgpack::object& o = m.handle->get();
    if (o.type == msgpack::type::MAP) {
      for (uint32_t i = 0; i < o.via.map.size; ++i) {
        m.keys[o.via.map.ptr[i].key.as<std::string>()] = o.via.map.ptr[i].val;
      }
    }
    std::lock_guard lk(mu_);
    messages_.push_back(std::move(m));
  }

  void run() {
    std::map<int, std::unique_ptr<msgpack::unpacker>> streams;
    std::vector<char> buf(1 << 20);
    while (!stop_) {
      if (close_conns_.exchange(false)) {
        for (int c : conns_) {
          shutdown(c, SHUT_RD);
          close(c);
          streams.erase(c);
        }
        conns_.clear();
        open_ = 0;
      }
      std::vector<pollfd> fds{{fd_, POLLIN, 0}};
      for (int c : conns_)
        fds.push_back({c, POLLIN, 0});
      if (poll(fds.data(), fds.size(), 20) <= 0) continue;
      for (const pollfd& p : fds) {
        if (!(p.revents & (POLLIN | POLLHUP))) continue;
        if (p.fd == fd_ && kind_ == kStream) {
          int c = accept(fd_, nullptr, nullptr);
          if (c >= 0) {
            conns_.push_back(c);
            streams[c] = std::make_unique<msgpack::unpacker>();
            ++connections_;
            ++open_;
          }
          continue;
        }
        ssize_t n = recv(p.fd, buf.data(), buf.size(), 0);
        if (n <= 0) {
          if (p.fd != fd_) {
            close(p.fd);
            conns_.erase(std::find(conns_.begin(), conns_.end(), p.fd));
            streams.erase(p.fd);
            --open_;
          }
          continue;
        }
        if (p.fd == fd_) {  // one datagram: whole maps back to back
          size_t off = 0;
          while (off < static_cast<size_t>(n))
            add(msgpack::unpack(buf.data(), n, off));
        } else {
          msgpack::unpacker& u = *streams[p.fd];
          u.reserve_buffer(n);
          std::memcpy(u.buffer(), buf.data(), n);
          u.buffer_consumed(n);
          msgpack::object_handle oh;
          while (u.next(oh))
            add(std::move(oh));
        }
      }
    }
  }

  Kind kind_;
  std::string path_;
  std::string endpoint_;
  int fd_ = -1;
  std::vector<int> conns_;
  std::atomic<int> connections_{0};
  std::atomic<int> open_{0};
  std::atomic<bool> close_conns_{false};
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;
  std::vector<Msg> messages_;
  std::thread thread_;
};

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/st-cpp-XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  static Options opts(const std::string& endpoint) {
    Options o;
    o.endpoint = endpoint;
    o.close_timeout = 500ms;
    return o;
  }
  std::string dir_;
};

std::vector<Msg> of_kind(const std::vector<Msg>& all, const std::string& kind) {
  std::vector<Msg> out;
  for (const Msg& m : all) {
    if (m.str("kind") == kind) out.push_back(m);
  }
  return out;
}

class TransportTest : public ClientTest, public ::testing::WithParamInterface<FakeAgent::Kind> {};

TEST_P(TransportTest, NestedTraceArrives) {
  FakeAgent agent(GetParam(), path("a.sock"));
  Client client(opts(agent.endpoint()));
  std::string message_id, tool_id, trace_id;
  {
    TraceContext ctx;
    ctx.conversation_id = "conv_123";
    ctx.session_id = "s1";
    ctx.metadata = {{"environment", "production"}};
    ctx.user = {{"id", "user_123"}};
    Trace trace = client.trace(ctx);
    trace_id = trace.trace_id();
    Event message = trace.message("User: hi");
    message_id = message.id();
    StartOptions so;
    so.name = "weather";
    so.attrs = {{"model", "m1"}};
    Event tool = message.tool("Calling weather API", so);
    tool_id = tool.id();
    EndOptions eo;
    eo.attrs = {{"output_tokens", 3}};
    tool.end(std::map<std::string, int>{{"temp", 21}}, eo);
    message.end("Bot: sunny");
  }
  ASSERT_TRUE(client.flush(2s));
  ASSERT_TRUE(agent.wait_count(5));
  auto msgs = agent.messages();
  ASSERT_EQ(msgs.size(), 5u);
  std::vector<std::string> kinds;
  for (const Msg& m : msgs)
    kinds.push_back(m.str("kind"));
  EXPECT_EQ(kinds, (std::vector<std::string>{"trace", "start", "start", "end", "end"}));
  EXPECT_TRUE(is_hex(trace_id, 32)) << trace_id;
  EXPECT_TRUE(is_hex(message_id, 16)) << message_id;
  uint64_t now = now_ns();
  for (const Msg& m : msgs) {
    EXPECT_EQ(m.u64("v"), 1u);
    EXPECT_EQ(m.str("trace_id"), trace_id);
    EXPECT_GT(m.u64("ts"), now - 10'000'000'000ull);
    EXPECT_LE(m.u64("ts"), now);
  }
  EXPECT_EQ(msgs[0].str("conversation_id"), "conv_123");
  EXPECT_EQ(msgs[0].str("session_id"), "s1");
  EXPECT_FALSE(msgs[0].has("interaction_id"));
  auto meta = msgs[0].keys.at("metadata").as<std::map<std::string, std::string>>();
  EXPECT_EQ(meta.at("environment"), "production");
  EXPECT_EQ((msgs[0].keys.at("user").as<std::map<std::string, std::string>>().at("id")),
            "user_123");
  EXPECT_EQ(msgs[1].str("type"), "MESSAGE");
  EXPECT_EQ(msgs[1].str("input"), "User: hi");
  EXPECT_FALSE(msgs[1].has("parent_id"));
  EXPECT_EQ(msgs[2].str("type"), "TOOL");
  EXPECT_EQ(msgs[2].str("parent_id"), message_id);
  EXPECT_EQ(msgs[2].str("name"), "weather");
  EXPECT_EQ((msgs[2].keys.at("attrs").as<std::map<std::string, std::string>>().at("model")), "m1");
  EXPECT_EQ(msgs[3].str("id"), tool_id);
  EXPECT_EQ((msgs[3].keys.at("output").as<std::map<std::string, int>>().at("temp")), 21);
  EXPECT_EQ((msgs[3].keys.at("attrs").as<std::map<std::string, int>>().at("output_tokens")), 3);
  EXPECT_EQ(msgs[4].str("id"), message_id);
  EXPECT_EQ(msgs[4].str("output"), "Bot: sunny");
  EXPECT_EQ(client.stats().sent, 5u);
}

INSTANTIATE_TEST_SUITE_P(AllTransports, TransportTest,
                         ::testing::Values(FakeAgent::kStream, FakeAgent::kDgram, FakeAgent::kUdp));

TEST_F(ClientTest, ScopeEndsEventsAndAnExceptionMarksThemFailed) {
  FakeAgent agent(FakeAgent::kStream, path("a.sock"));
  Client client(opts(agent.endpoint()));
  Trace trace = client.trace();
  std::string ok_id, failed_id, explicit_id;
  {
    Event ok = trace.tool("scoped");
    ok_id = ok.id();
  }
  try {
    Event failed = trace.generation("throws");
    failed_id = failed.id();
    throw std::runtime_error("boom");
  } catch (const std::runtime_error&) {
  }
  {
    Event e = trace.agent("explicit");
    explicit_id = e.id();
    e.fail("timeout", "partial");
    e.end("ignored: already ended");
  }
  ASSERT_TRUE(client.flush(2s));
  ASSERT_TRUE(agent.wait_count(7));
  std::map<std::string, Msg> ends;
  for (const Msg& m : of_kind(agent.messages(), "end"))
    ends[m.str("id")] = m;
  ASSERT_EQ(ends.size(), 3u);
  EXPECT_FALSE(ends[ok_id].has("status"));
  EXPECT_EQ(ends[failed_id].str("status"), "error");
  EXPECT_EQ(ends[failed_id].str("error"), "an exception left the event's scope");
  EXPECT_EQ(ends[explicit_id].str("status"), "error");
  EXPECT_EQ(ends[explicit_id].str("error"), "timeout");
  EXPECT_EQ(ends[explicit_id].str("output"), "partial");
  EXPECT_EQ(of_kind(agent.messages(), "end").size(), 3u);
}

TEST_F(ClientTest, MovedEventEndsOnce) {
  FakeAgent agent(FakeAgent::kStream, path("a.sock"));
  Client client(opts(agent.endpoint()));
  Trace trace = client.trace();
  {
    Event a = trace.message("m");
    Event b = std::move(a);
    Event c = trace.message("other");
    c = std::move(b);  // ends "other", then owns "m"
  }
  ASSERT_TRUE(client.flush(2s));
  ASSERT_TRUE(agent.wait_count(5));
  EXPECT_EQ(of_kind(agent.messages(), "end").size(), 2u);
}

TEST_F(ClientTest, SendFeedbackAndCustomEvents) {
  FakeAgent agent(FakeAgent::kStream, path("a.sock"));
  Client client(opts(agent.endpoint()));
  Trace trace = client.trace();
  uint64_t before = now_ns();
  Finished f;
  f.type = "GENERATION";
  f.input = "q";
  f.output = "a";
  f.latency_ms = 250;
  f.attrs = {{"cost_usd", 0.25}};
  std::string gen_id = trace.send(f);
  trace.feedback({.tag = "THUMBS_UP", .text = "helpful", .score = 1.0});
  Event sys = trace.system("boot");
  sys.custom("cache_warm", std::vector<int>{1, 2}).end();
  sys.feedback({.tag = "SLOW"});
  sys.end();
  ASSERT_TRUE(client.flush(2s));
  ASSERT_TRUE(agent.wait_count(8));
  auto ev = of_kind(agent.messages(), "event").at(0);
  EXPECT_EQ(ev.str("id"), gen_id);
  EXPECT_EQ(ev.str("type"), "GENERATION");
  EXPECT_EQ(ev.u64("latency_ms"), 250u);
  EXPECT_LE(ev.u64("ts"), now_ns() - 250'000'000ull);
  EXPECT_GE(ev.u64("ts"), before - 250'000'000ull);
  EXPECT_DOUBLE_EQ((ev.keys.at("attrs").as<std::map<std::string, double>>().at("cost_usd")), 0.25);
  auto fbs = of_kind(agent.messages(), "feedback");
  ASSERT_EQ(fbs.size(), 2u);
  EXPECT_EQ(fbs[0].str("tag"), "THUMBS_UP");
  EXPECT_DOUBLE_EQ(fbs[0].keys.at("score").as<double>(), 1.0);
  EXPECT_FALSE(fbs[0].has("target_id"));
  EXPECT_EQ(fbs[1].str("target_id"), sys.id());
  auto starts = of_kind(agent.messages(), "start");
  ASSERT_EQ(starts.size(), 2u);
  EXPECT_EQ(starts[1].str("type"), "CUSTOM");
  EXPECT_EQ(starts[1].str("name"), "cache_warm");
  EXPECT_EQ(starts[1].str("parent_id"), sys.id());
  EXPECT_EQ(starts[1].keys.at("input").as<std::vector<int>>(), (std::vector<int>{1, 2}));
}

TEST_F(ClientTest, ManyThreadsAllArrive) {
  FakeAgent agent(FakeAgent::kStream, path("a.sock"));
  Client client(opts(agent.endpoint()));
  Trace trace = client.trace();
  constexpr int kThreads = 4, kPer = 2000;
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < kPer; ++i)
        trace.send({.type = "TOOL", .input = t * kPer + i});
    });
  }
  for (auto& t : ts)
    t.join();
  ASSERT_TRUE(client.flush(5s));
  ASSERT_TRUE(agent.wait_count(1 + kThreads * kPer));
  std::vector<int> inputs;
  for (const Msg& m : of_kind(agent.messages(), "event"))
    inputs.push_back(m.keys.at("input").as<int>());
  std::sort(inputs.begin(), inputs.end());
  ASSERT_EQ(inputs.size(), size_t{kThreads * kPer});
  for (int i = 0; i < kThreads * kPer; ++i)
    ASSERT_EQ(inputs[i], i);
  EXPECT_EQ(client.stats().dropped(), 0u);
}

TEST_F(ClientTest, AgentAbsentIsFastCountedAndNeverThrows) {
  Options o = opts("unix://" + path("nobody.sock"));
  o.max_queue = 50;
  Client client(o);
  auto t0 = std::chrono::steady_clock::now();
  Trace trace = client.trace();
  for (int i = 0; i < 500; ++i) {
    Event m = trace.message(i);
    m.tool("t").end("r");
  }
  auto t1 = std::chrono::steady_clock::now();
  EXPECT_FALSE(client.flush(2s));
  EXPECT_LT(std::chrono::steady_clock::now() - t1, 1s);
  EXPECT_LT(t1 - t0, 1s);
  Stats s = client.stats();
  EXPECT_EQ(s.sent, 0u);
  EXPECT_EQ(s.queued, 0u);
  EXPECT_EQ(s.dropped_queue_full + s.dropped_no_agent, 2001u);
  EXPECT_GT(s.dropped_queue_full, 0u);
  EXPECT_GT(s.dropped_no_agent, 0u);
  EXPECT_GE(s.connect_failures, 1u);
}

TEST_F(ClientTest, QueueIsBoundedWhileTheAgentIsDownThenDelivered) {
  Options o = opts("unix://" + path("late.sock"));
  o.max_queue = 10;
  Client client(o);
  Trace trace = client.trace();
  for (int i = 0; i < 99; ++i)
    trace.send({.type = "TOOL", .input = i});
  EXPECT_EQ(client.stats().queued, 10u);
  EXPECT_EQ(client.stats().dropped_queue_full, 90u);
  FakeAgent agent(FakeAgent::kStream, path("late.sock"));
  ASSERT_TRUE(agent.wait_count(10));
  auto msgs = agent.messages();
  EXPECT_EQ(msgs[0].str("kind"), "trace");
  for (int i = 1; i < 10; ++i)
    EXPECT_EQ(msgs[i].keys.at("input").as<int>(), i - 1);
}

TEST_F(ClientTest, ReconnectsAfterTheAgentRestarts) {
  auto agent = std::make_unique<FakeAgent>(FakeAgent::kStream, path("r.sock"));
  Client client(opts(agent->endpoint()));
  Trace trace = client.trace();
  trace.send({.input = "before"});
  ASSERT_TRUE(client.flush(2s));
  ASSERT_TRUE(agent->wait_count(2));
  agent.reset();
  agent = std::make_unique<FakeAgent>(FakeAgent::kStream, path("r.sock"));
  bool delivered = wait_until([&] {
    trace.send({.input = "after"});
    client.flush(300ms);
    for (const Msg& m : agent->messages()) {
      if (m.str("input") == "after") return true;
    }
    return false;
  });
  EXPECT_TRUE(delivered);
  EXPECT_GE(client.stats().connects, 2u);
}

// The agent closes a connection left idle (listen.idle_timeout_s): the next
// batch fails to go out on it, whole, and is sent again on a new connection
// instead of dropped.
TEST_F(ClientTest, ABatchSentAfterTheAgentClosedTheConnectionGoesOutOnANewOne) {
  FakeAgent agent(FakeAgent::kStream, path("idle.sock"));
  Client client(opts(agent.endpoint()));
  Trace trace = client.trace();
  trace.send({.input = "first"});
  ASSERT_TRUE(client.flush(2s));
  ASSERT_TRUE(agent.wait_count(2));
  agent.close_connections();
  ASSERT_TRUE(wait_until([&] { return agent.open_connections() == 0; }));
  trace.send({.input = "second"});
  ASSERT_TRUE(client.flush(2s));
  ASSERT_TRUE(agent.wait_count(3));
  EXPECT_EQ(agent.messages()[2].str("input"), "second");
  EXPECT_EQ(client.stats().dropped_send_error, 0u);
  EXPECT_EQ(agent.connections(), 2);
}

TEST_F(ClientTest, FullAgentSocketNeverBlocksTheCaller) {
  FakeAgent agent(FakeAgent::kDgram, path("full.sock"), /*read=*/false);
  Options o = opts(agent.endpoint());
  o.max_queue = 100;
  Client client(o);
  Trace trace = client.trace();
  std::string big(4000, 'x');
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 5000; ++i)
    trace.send({.type = "TOOL", .input = big});
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  EXPECT_FALSE(client.flush(200ms));
  Stats s = client.stats();
  EXPECT_GT(s.dropped_queue_full, 0u);
  EXPECT_LE(s.queued, 100u);
  EXPECT_FALSE(client.close(0ms));
  EXPECT_EQ(client.stats().queued, 0u);
  EXPECT_GT(client.stats().dropped_closed, 0u);
}

TEST_F(ClientTest, BadEndpointDropsAndCounts) {
  Client client(opts("http://nope"));
  EXPECT_FALSE(client.endpoint_ok());
  client.trace().message("x").end("y");
  EXPECT_EQ(client.stats().dropped_bad_endpoint, 3u);
  EXPECT_TRUE(client.flush(10ms));
}

TEST_F(ClientTest, EndpointFromTheEnvironmentAndOversizedMessages) {
  FakeAgent agent(FakeAgent::kUdp, "");
  setenv("SIDETRACE_ENDPOINT", agent.endpoint().c_str(), 1);
  Options o;
  o.max_message_bytes = 4096;
  Client client(o);
  unsetenv("SIDETRACE_ENDPOINT");
  EXPECT_EQ(client.endpoint(), agent.endpoint());
  Trace trace = client.trace();
  trace.send({.input = std::string(10000, 'x')});
  trace.send({.input = "small"});
  ASSERT_TRUE(client.flush(2s));
  ASSERT_TRUE(agent.wait_count(2));
  EXPECT_EQ(client.stats().dropped_too_large, 1u);
  EXPECT_EQ(agent.messages()[1].str("input"), "small");
}

TEST_F(ClientTest, EmitAfterCloseIsDroppedAndCounted) {
  FakeAgent agent(FakeAgent::kStream, path("a.sock"));
  Client client(opts(agent.endpoint()));
  Trace trace = client.trace();
  EXPECT_TRUE(client.close(1s));
  trace.message("late");  // start, then end as the temporary goes out of scope
  EXPECT_EQ(client.stats().dropped_closed, 2u);
}

TEST_F(ClientTest, ArgumentsTheProtocolCannotCarryAreLeftOutAndCounted) {
  FakeAgent agent(FakeAgent::kStream, path("a.sock"));
  Client client(opts(agent.endpoint()));
  const std::string long_id(129, 'x');
  Trace long_trace = client.trace({.trace_id = long_id});
  EXPECT_TRUE(is_hex(long_trace.trace_id(), 32)) << long_trace.trace_id();
  const std::string id128(128, 'a');
  Trace trace = client.trace({.trace_id = id128});
  EXPECT_EQ(trace.trace_id(), id128);
  trace.send({.type = "", .latency_ms = -5, .parent_id = long_id});
  trace.send({.type = long_id, .latency_ms = std::numeric_limits<int64_t>::max()});
  trace.feedback({.score = std::nan(""), .target_id = long_id});
  trace.feedback({.score = -std::numeric_limits<double>::infinity()});
  const std::string map_bytes("\x81\xa1k\x01", 4);  // {"k": 1}
  Event raw_ok = trace.message(Value::raw(map_bytes));
  Event raw_bad = trace.message(Value::raw("\xc1"), {.attrs = {{"a", Value::raw("\x92\x01")}}});
  raw_bad.end(Value::raw(map_bytes + "\x01"), {.attrs = {{"e", Explodes{}}, {"ok", 1}}});
  raw_ok.end(Explodes{});
  trace.update({.metadata = {{"m", Value::raw("\xc1")}}, .user = {{"id", "u"}}});
  raw_ok.feedback({.score = std::numeric_limits<double>::quiet_NaN(), .target_id = long_id});
  EXPECT_TRUE(raw_ok.send({.type = "", .parent_id = long_id}).size() == 16);
  EXPECT_TRUE(Value::raw("").rejected());
  EXPECT_TRUE(Value(Explodes{}).rejected() && Value(Explodes{}).empty());
  EXPECT_FALSE(Value::raw(map_bytes).rejected());
  ASSERT_TRUE(client.flush(2s));
  ASSERT_TRUE(agent.wait_count(13));
  auto msgs = agent.messages();
  EXPECT_EQ(protocol_problems(msgs), std::vector<std::string>{});
  auto events = of_kind(msgs, "event");
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[2].str("type"), "CUSTOM");
  EXPECT_EQ(events[2].str("parent_id"), raw_ok.id());  // the event's own id, not parent_id
  EXPECT_EQ(events[0].str("type"), "CUSTOM");
  EXPECT_EQ(events[0].u64("latency_ms"), 0u);
  EXPECT_FALSE(events[0].has("parent_id"));
  EXPECT_GT(events[0].u64("ts"), now_ns() - 10'000'000'000ull);
  EXPECT_EQ(events[1].str("type"), "CUSTOM");
  EXPECT_EQ(events[1].u64("ts"), 0u);  // started so long ago that it is clamped to the epoch
  auto fbs = of_kind(msgs, "feedback");
  ASSERT_EQ(fbs.size(), 3u);
  EXPECT_FALSE(fbs[0].has("score") || fbs[0].has("target_id") || fbs[1].has("score"));
  EXPECT_FALSE(fbs[2].has("score"));
  EXPECT_EQ(fbs[2].str("target_id"), raw_ok.id());
  auto traces = of_kind(msgs, "trace");
  ASSERT_EQ(traces.size(), 3u);
  EXPECT_TRUE(traces[2].keys.at("metadata").via.map.ptr[0].val.is_nil());
  auto starts = of_kind(msgs, "start");
  ASSERT_EQ(starts.size(), 2u);
  EXPECT_EQ((starts[0].keys.at("input").as<std::map<std::string, int>>().at("k")), 1);
  EXPECT_FALSE(starts[1].has("input"));
  EXPECT_TRUE(starts[1].keys.at("attrs").via.map.ptr[0].val.is_nil());
  auto ends = of_kind(msgs, "end");
  ASSERT_EQ(ends.size(), 2u);
  EXPECT_FALSE(ends[0].has("output"));
  EXPECT_EQ(
      (ends[0].keys.at("attrs").as<std::map<std::string, msgpack::object>>().at("ok").as<int>()),
      1);
  EXPECT_FALSE(ends[1].has("output"));
  Stats s = client.stats();
  // long trace id, type "", latency -5, long parent, long type, NaN score, long target,
  // infinite score, raw "\xc1" input, truncated raw attr, trailing-byte output, Explodes attr,
  // Explodes output, raw "\xc1" metadata, NaN score of the event's feedback, type "" of the
  // event's send
  EXPECT_EQ(s.args_dropped, 16u);
  EXPECT_EQ(s.internal_errors, 0u);
  EXPECT_EQ(s.dropped(), 0u);
}

TEST_F(ClientTest, MovedFromTracesAndEventsSendNothingAndCount) {
  FakeAgent agent(FakeAgent::kStream, path("a.sock"));
  Client client(opts(agent.endpoint()));
  Trace trace = client.trace();
  Trace kept = std::move(trace);
  Event ev = kept.message("m");
  Event owner = std::move(ev);
  trace.message("from a moved-from trace").end();  // NOLINT(bugprone-use-after-move)
  trace.update({.conversation_id = "c"});
  trace.send({.type = "TOOL"});
  trace.feedback({.tag = "UP"});
  ev.tool("child of a moved-from event").end();  // NOLINT(bugprone-use-after-move)
  ev.send({.type = "TOOL"});
  ev.feedback({.tag = "UP"});
  ev.end("ignored");
  owner.end("done");
  ASSERT_TRUE(client.flush(2s));
  ASSERT_TRUE(agent.wait_count(3));
  EXPECT_EQ(agent.messages().size(), 3u);
  EXPECT_EQ(protocol_problems(agent.messages()), std::vector<std::string>{});
  EXPECT_EQ(client.stats().args_dropped, 7u);
  EXPECT_EQ(client.stats().internal_errors, 0u);
}

TEST_F(ClientTest, AllocationFailuresNeverEscapeAndEveryMessageSentIsWhole) {
  FakeAgent agent(FakeAgent::kStream, path("a.sock"));
  Client client(opts(agent.endpoint()));
  const TraceContext ctx{.conversation_id = "conv", .session_id = "s"};
  Trace trace = client.trace();
  int failures = 0;
  failures += with_each_allocation_failing([&] { Trace t = client.trace(ctx); });
  failures += with_each_allocation_failing([&] {
    Event m = trace.message("q");
    Event t = m.tool("t", {.name = "n"});
    t.end("r", {.error_text = "e"});
  });  // m ends in its destructor
  failures += with_each_allocation_failing([&] {
    try {
      Event g = trace.generation("g");
      throw 1;
    } catch (int) {  // g failed in its destructor during unwinding
    }
  });
  failures += with_each_allocation_failing([&] {
    Event a = trace.agent("a");
    Event b = trace.router("b");
    b = std::move(a);  // ends "b" in a noexcept move assignment
    b.fail("timeout", 5);
  });
  failures += with_each_allocation_failing([&] {
    std::string id = trace.send({.type = "TOOL", .input = 1, .latency_ms = 3});
    Event m = trace.system("s");
    m.send({.type = "TOOL"});
    m.feedback({.tag = "UP", .score = 1.0});
    m.custom("c").end();
    trace.custom("c2").end();
    trace.feedback({.tag = "DOWN"});
  });
  failures += with_each_allocation_failing([&] { client.flush(50ms); });
  ASSERT_GT(failures, 20);
  Stats s = client.stats();
  EXPECT_GT(s.internal_errors, 0u);
  EXPECT_LE(s.internal_errors, static_cast<uint64_t>(failures));
  // Without failures the same client still works.
  trace.message("after").end("ok");
  ASSERT_TRUE(client.flush(2s));
  ASSERT_TRUE(agent.wait_count(client.stats().sent));
  auto msgs = agent.messages();
  EXPECT_EQ(protocol_problems(msgs), std::vector<std::string>{});
  EXPECT_EQ(msgs.back().str("output"), "ok");
}

TEST_F(ClientTest, ConstructionUnderAllocationFailureThrowsOnlyBadAlloc) {
  FakeAgent agent(FakeAgent::kStream, path("a.sock"));
  std::vector<Options> options(200, opts(agent.endpoint()));
  size_t next = 0;
  int constructions_failed = 0;
  bool worked = false;
  const int failures = with_each_allocation_failing([&] {
    std::unique_ptr<Client> c;
    try {
      c = std::make_unique<Client>(std::move(options.at(next++)));
    } catch (const std::bad_alloc&) {  // the client object or its own state
      ++constructions_failed;
      return;
    }
    c->trace().message("x").end("y");  // noexcept: a throw here would terminate
    worked = c->flush(2s) || worked;
  });
  EXPECT_GT(failures, constructions_failed);  // the later failures were absorbed
  EXPECT_GE(constructions_failed, 1);
  EXPECT_TRUE(worked);
}

}  // namespace
}  // namespace sidetrace::client

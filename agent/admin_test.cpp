#include "agent/admin.h"

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <condition_variable>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "agent/metrics.h"
#include "agent/operations.h"
#include "common/host_allowed.h"
#include "common/wait_until.h"

namespace sidetrace::agent {
namespace {

// A status line and headers (lower-cased names) and the body of a response.
struct RawResponse {
  unsigned status = 0;
  std::string head;  // the status line and the headers, names lower-cased
  std::string body;
};

// Sends `request` as it is over a new connection and reads the response up
// to the server's close (the request should say "Connection: close").
RawResponse raw_request(unsigned short port, const std::string& request) {
  boost::asio::io_context io;
  boost::asio::ip::tcp::socket s(io);
  s.connect({boost::asio::ip::make_address("127.0.0.1"), port});
  boost::asio::write(s, boost::asio::buffer(request));
  std::string got;
  boost::system::error_code ec;
  char buf[1024];
  while (!ec) {
    size_t n = s.read_some(boost::asio::buffer(buf), ec);
    got.append(buf, n);
  }
  RawResponse r;
  size_t end = got.find("\r\n\r\n");
  r.head = got.substr(0, end);
  for (char& c : r.head)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  r.body = end == std::string::npos ? "" : got.substr(end + 4);
  if (got.starts_with("HTTP/1.1 ")) r.status = static_cast<unsigned>(std::stoul(got.substr(9, 3)));
  return r;
}

// A request with `headers` (each "Name: value") and Connection: close.
std::string http(const std::string& method, const std::string& target,
                 const std::vector<std::string>& headers, const std::string& body = {}) {
  std::string r = method + " " + target + " HTTP/1.1\r\n";
  for (const auto& h : headers)
    r += h + "\r\n";
  r += "Connection: close\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n";
  return r + body;
}

constexpr const char* kToken = "tok-0123456789abcdef";

class AdminTest : public ::testing::Test {
 protected:
  virtual AdminAccess access() const { return {}; }

  void SetUp() override {
    server_ = std::make_unique<AdminServer>(
        io_,
        [this](const std::string& method, const std::string& target) {
          ++calls_;
          AdminResponse r;
          if (target.starts_with("/healthz") || target.starts_with("/readyz")) {
            r.body = "ok\n";
          } else if (target.starts_with("/echo")) {
            r.body = method + " " + target;
          } else if (target == "/slow") {
            slow_entered_ = true;
            while (!slow_release_)
              std::this_thread::yield();
            r.body = "slow done\n";
          } else if (target == "/throw") {
            throw std::runtime_error("the handler failed");
          } else if (target == "/purge" && method == "POST") {
            ++changes_;
            r.body = "purged\n";
          } else {
            r.status = 404;
            r.body = "not found\n";
          }
          return r;
        },
        access());
    std::string err;
    ASSERT_FALSE(server_->listen("127.0.0.1:0", &err)) << err;
    ASSERT_NE(server_->port(), 0);
    thread_ = std::thread([this] { io_.run(); });
  }
  void TearDown() override {
    server_->stop();
    io_.stop();
    thread_.join();
  }
  std::string addr() const { return "127.0.0.1:" + std::to_string(server_->port()); }
  std::string host() const { return "Host: 127.0.0.1:" + std::to_string(server_->port()); }
  RawResponse send(const std::string& method, const std::string& target,
                   const std::vector<std::string>& headers, const std::string& body = {}) {
    return raw_request(server_->port(), http(method, target, headers, body));
  }

  boost::asio::io_context io_;
  std::unique_ptr<AdminServer> server_;
  std::thread thread_;
  std::atomic<int> calls_{0};
  std::atomic<int> changes_{0};  // POST /purge calls that reached the handler
  std::atomic<bool> slow_entered_{false}, slow_release_{false};
};

TEST_F(AdminTest, ASlowRequestDoesNotHoldUpTheHealthCheck) {
  unsigned slow_status = 0;
  std::string slow_body, slow_err;
  std::thread slow(
      [&] { admin_request(addr(), "POST", "/slow", &slow_status, &slow_body, &slow_err); });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!slow_entered_ && std::chrono::steady_clock::now() < deadline)
    std::this_thread::yield();
  ASSERT_TRUE(slow_entered_);
  unsigned status = 0;
  std::string body, err;
  ASSERT_TRUE(admin_get(addr(), "/healthz", &status, &body, &err)) << err;
  EXPECT_EQ(status, 200u);
  ASSERT_TRUE(admin_get(addr(), "/metrics", &status, &body, &err)) << err;
  EXPECT_EQ(status, 404u);  // answered too, while /slow still runs
  EXPECT_FALSE(slow_release_);
  slow_release_ = true;
  slow.join();
  EXPECT_EQ(slow_status, 200u) << slow_err;
  EXPECT_EQ(slow_body, "slow done\n");
}

TEST_F(AdminTest, JoiningTheWorkerWaitsForItsRequestAndDropsTheQueued) {
  // Clients that send and never read: the test closes them at the end.
  boost::asio::io_context cio;
  auto client = [&](const std::string& request) {
    auto s = std::make_unique<boost::asio::ip::tcp::socket>(cio);
    s->connect({boost::asio::ip::make_address("127.0.0.1"), server_->port()});
    boost::asio::write(*s, boost::asio::buffer(request));
    return s;
  };
  auto slow = client(http("POST", "/slow", {host(), "X-Sidetrace-Request: 1"}));
  ASSERT_TRUE(wait_until([&] { return slow_entered_.load(); }));
  // Another request, behind it on the worker (or still being read).
  auto queued = client(http("GET", "/echo", {host()}));
  // As the agent stops: the server's thread first, then the worker.
  server_->stop();
  io_.stop();
  thread_.join();
  std::atomic<bool> joined{false};
  std::thread joiner([&] {
    server_->join_worker();
    joined = true;
  });
  // It waits for the request under way...
  EXPECT_FALSE(wait_until([&] { return joined.load(); }, std::chrono::milliseconds(200)));
  slow_release_ = true;
  ASSERT_TRUE(wait_until([&] { return joined.load(); }));
  joiner.join();
  // ...and nothing reaches the handler after it.
  EXPECT_EQ(calls_.load(), 1);
  thread_ = std::thread([] {});  // for TearDown
}

TEST_F(AdminTest, AHandlerThatThrowsAnswers500AndTheEndpointGoesOn) {
  unsigned status = 0;
  std::string body, err;
  ASSERT_TRUE(admin_get(addr(), "/throw", &status, &body, &err)) << err;
  EXPECT_EQ(status, 500u);
  EXPECT_EQ(body, "the handler failed\n");
  ASSERT_TRUE(admin_get(addr(), "/echo", &status, &body, &err)) << err;
  EXPECT_EQ(body, "GET /echo");
}

TEST_F(AdminTest, ServesRoutesAndNotFound) {
  unsigned status = 0;
  std::string body, err;
  ASSERT_TRUE(admin_get(addr(), "/healthz", &status, &body, &err)) << err;
  EXPECT_EQ(status, 200u);
  EXPECT_EQ(body, "ok\n");
  ASSERT_TRUE(admin_get(addr(), "/echo?q=1", &status, &body, &err)) << err;
  EXPECT_EQ(body, "GET /echo?q=1");
  ASSERT_TRUE(admin_request(addr(), "POST", "/echo", &status, &body, &err)) << err;
  EXPECT_EQ(body, "POST /echo");
  ASSERT_TRUE(admin_get(addr(), "/nope", &status, &body, &err)) << err;
  EXPECT_EQ(status, 404u);
}

TEST_F(AdminTest, KeepsConnectionAliveAcrossRequests) {
  boost::asio::ip::tcp::socket s(io_);
  s.connect({boost::asio::ip::make_address("127.0.0.1"), server_->port()});
  std::string two =
      "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
      "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
  boost::asio::write(s, boost::asio::buffer(two));
  std::string got;
  char buf[512];
  while (got.find("ok\n", got.find("ok\n") + 1) == std::string::npos) {
    size_t n = s.read_some(boost::asio::buffer(buf));
    got.append(buf, n);
  }
  EXPECT_EQ(calls_.load(), 2);
}

TEST_F(AdminTest, MalformedRequestClosesOnlyThatConnection) {
  boost::asio::ip::tcp::socket s(io_);
  s.connect({boost::asio::ip::make_address("127.0.0.1"), server_->port()});
  boost::asio::write(s, boost::asio::buffer(std::string("\x01\x02garbage\r\n\r\n")));
  boost::system::error_code ec;
  char buf[64];
  while (!ec)
    s.read_some(boost::asio::buffer(buf), ec);  // the server closes it
  unsigned status = 0;
  std::string body, err;
  ASSERT_TRUE(admin_get(addr(), "/healthz", &status, &body, &err)) << err;
  EXPECT_EQ(status, 200u);
}

// ---- who may use the endpoint

TEST_F(AdminTest, RefusesAHostNameThatIsNotThisAgents) {
  // A page reached through DNS rebinding sends its own name.
  const std::string port = std::to_string(server_->port());
  for (const std::string& h : std::vector<std::string>{
           "evil.example.com:" + port, std::string("evil.example.com"),
           "127.0.0.1.evil.example:" + port, "localhost.evil.example", "10.1.2.3:" + port,
           std::string("[::2]:") + port, std::string("::1"), "127.0.0.1:" + port + "x"}) {
    RawResponse r = send("GET", "/echo", {"Host: " + h});
    EXPECT_EQ(r.status, 421u) << h;
    EXPECT_NE(r.body.find("admin.allowed_hosts"), std::string::npos) << r.body;
  }
  EXPECT_EQ(calls_.load(), 0);
  EXPECT_EQ(send("GET", "/echo", {"Host: 127.0.0.1", "Host: evil.example.com"}).status, 400u);
  EXPECT_EQ(calls_.load(), 0);
}

TEST_F(AdminTest, AcceptsLoopbackNamesAndAddresses) {
  const std::string port = std::to_string(server_->port());
  for (const std::string& h :
       std::vector<std::string>{"127.0.0.1:" + port, std::string("127.0.0.1"), "127.0.0.2:" + port,
                                "localhost:" + port, std::string("LOCALHOST."),
                                "app.localhost:" + port, "[::1]:" + port, std::string("[::1]")}) {
    RawResponse r = send("GET", "/echo", {"Host: " + h});
    EXPECT_EQ(r.status, 200u) << h << "\n" << r.body;
  }
  // Not a browser: nothing to rebind.
  EXPECT_EQ(send("GET", "/echo", {}).status, 200u);
}

TEST_F(AdminTest, RefusesCrossSitePosts) {
  const std::string form = "Content-Type: application/x-www-form-urlencoded";
  // The report: a plain form on another site.
  RawResponse r = send("POST", "/purge", {host(), "Origin: http://evil.example.com", form}, "x=1");
  EXPECT_EQ(r.status, 403u);
  EXPECT_NE(r.body.find("another origin"), std::string::npos) << r.body;
  // A cross-site Origin is refused even with the header (and a null origin too).
  for (const std::string& origin :
       std::vector<std::string>{std::string("http://evil.example.com"), std::string("null"),
                                "http://localhost:" + std::to_string(server_->port() + 1)}) {
    r = send("POST", "/purge", {host(), "Origin: " + origin, "X-Sidetrace-Request: 1"});
    EXPECT_EQ(r.status, 403u) << origin;
  }
  // Sec-Fetch-Site, from browsers that send no Origin.
  for (const char* site : {"cross-site", "same-site"}) {
    r = send("POST", "/purge",
             {host(), std::string("Sec-Fetch-Site: ") + site, "X-Sidetrace-Request: 1"});
    EXPECT_EQ(r.status, 403u) << site;
    EXPECT_NE(r.body.find("another site"), std::string::npos) << r.body;
  }
  // What a form can send: a simple content type and no custom header.
  for (const std::string& type :
       std::vector<std::string>{form, std::string("Content-Type: text/plain"),
                                std::string("Content-Type: multipart/form-data; boundary=x")}) {
    r = send("POST", "/purge", {host(), type}, "x=1");
    EXPECT_EQ(r.status, 403u) << type;
    EXPECT_NE(r.body.find("X-Sidetrace-Request"), std::string::npos) << r.body;
  }
  EXPECT_EQ(changes_.load(), 0);
  EXPECT_EQ(calls_.load(), 0);

  // The same origin, as the viewer sends it, and the command-line client.
  const std::string self = "http://127.0.0.1:" + std::to_string(server_->port());
  r = send("POST", "/purge",
           {host(), "Origin: " + self, "Sec-Fetch-Site: same-origin", "X-Sidetrace-Request: 1"});
  EXPECT_EQ(r.status, 200u) << r.body;
  unsigned status = 0;
  std::string body, err;
  ASSERT_TRUE(admin_request(addr(), "POST", "/purge", &status, &body, &err)) << err;
  EXPECT_EQ(status, 200u) << body;
  EXPECT_EQ(changes_.load(), 2);
  // A preflight is never granted.
  r = send("OPTIONS", "/purge",
           {host(), "Origin: http://evil.example.com", "Access-Control-Request-Method: POST"});
  EXPECT_EQ(r.status, 405u);
  EXPECT_EQ(r.head.find("access-control-allow"), std::string::npos) << r.head;
}

class AdminAllowedHostsTest : public AdminTest {
 protected:
  AdminAccess access() const override {
    AdminAccess a;
    a.allowed_hosts = {"Agent.Internal", ".svc.example."};
    return a;
  }
};

TEST_F(AdminAllowedHostsTest, AcceptsTheListedNamesAndTheirSubdomains) {
  for (const char* h : {"agent.internal:7718", "AGENT.INTERNAL", "x.svc.example",
                        "a.b.svc.example:80", "svc.example"}) {
    EXPECT_EQ(send("GET", "/echo", {std::string("Host: ") + h}).status, 200u) << h;
  }
  for (const char* h :
       {"agent.internal.evil.example", "evilsvc.example", "x.agent.internal", "evil.example"}) {
    EXPECT_EQ(send("GET", "/echo", {std::string("Host: ") + h}).status, 421u) << h;
  }
}

TEST(AdminHostAllowed, TheAddressTheConnectionCameInOn) {
  // An agent listening on 0.0.0.0, reached at 10.0.0.5 (a kubelet probe).
  EXPECT_TRUE(host_allowed("10.0.0.5:7718", {}, "10.0.0.5"));
  EXPECT_TRUE(host_allowed("[fd00::5]:7718", {}, "fd00::5"));
  EXPECT_FALSE(host_allowed("10.0.0.6:7718", {}, "10.0.0.5"));
  EXPECT_FALSE(host_allowed("pod.example:7718", {}, "10.0.0.5"));
  EXPECT_TRUE(host_allowed("pod.example:7718", {"pod.example"}, "10.0.0.5"));
  EXPECT_FALSE(host_allowed("", {}, "127.0.0.1"));
  EXPECT_FALSE(host_allowed("[::1", {}, "127.0.0.1"));
  EXPECT_FALSE(host_allowed("localhost:80:80", {}, "127.0.0.1"));
}

TEST(AdminToken, ConstantTimeCompare) {
  EXPECT_TRUE(equal_constant_time(kToken, kToken));
  EXPECT_FALSE(equal_constant_time("", kToken));
  EXPECT_FALSE(equal_constant_time("tok-0123456789abcdeF", kToken));
  EXPECT_FALSE(equal_constant_time("tok-0123456789abcdef0", kToken));
  EXPECT_FALSE(equal_constant_time("tok-0123456789abcde", kToken));
  // `a` cycled over a shorter `b` is not a match.
  EXPECT_FALSE(equal_constant_time("abab", "ab"));
}

class AdminTokenTest : public AdminTest {
 protected:
  AdminAccess access() const override {
    AdminAccess a;
    a.token = kToken;
    return a;
  }
};

TEST_F(AdminTokenTest, RefusesARequestWithoutTheToken) {
  for (const std::string& auth : std::vector<std::string>{
           std::string(), std::string("Authorization: Bearer wrong-token-0123456789"),
           "Authorization: Bearer " + std::string(kToken) + "x",
           "Authorization: Bearer " + std::string(kToken).substr(0, 10),
           "Authorization: Basic " + std::string(kToken), std::string("Authorization: Bearer"),
           "Authorization: " + std::string(kToken)}) {
    std::vector<std::string> headers = {host()};
    if (!auth.empty()) headers.push_back(auth);
    RawResponse r = send("GET", "/echo", headers);
    EXPECT_EQ(r.status, 401u) << auth;
    EXPECT_NE(r.head.find("www-authenticate: bearer"), std::string::npos) << r.head;
    EXPECT_NE(r.body.find("admin.token"), std::string::npos) << r.body;
  }
  // Through the client, without a token or with a wrong one.
  unsigned status = 0;
  std::string body, err;
  ASSERT_TRUE(admin_get(addr(), "/echo", &status, &body, &err)) << err;
  EXPECT_EQ(status, 401u);
  ASSERT_TRUE(admin_request(addr(), "POST", "/purge", &status, &body, &err, "wrong-0123456789"))
      << err;
  EXPECT_EQ(status, 401u);
  // The probe paths are open to GET and HEAD only.
  EXPECT_EQ(send("POST", "/healthz", {host(), "X-Sidetrace-Request: 1"}).status, 401u);
  EXPECT_EQ(calls_.load(), 0);
  EXPECT_EQ(changes_.load(), 0);
}

TEST_F(AdminTokenTest, ProbesNeedNoToken) {
  for (const char* path : {"/healthz", "/readyz", "/healthz?verbose=1"}) {
    EXPECT_EQ(send("GET", path, {host()}).status, 200u) << path;
    EXPECT_EQ(send("HEAD", path, {host()}).status, 200u) << path;
  }
  unsigned status = 0;
  std::string body, err;
  ASSERT_TRUE(admin_get(addr(), "/readyz", &status, &body, &err)) << err;
  EXPECT_EQ(status, 200u);
}

TEST_F(AdminTokenTest, ServesARequestWithTheToken) {
  unsigned status = 0;
  std::string body, err;
  ASSERT_TRUE(admin_get(addr(), "/echo?q=1", &status, &body, &err, kToken)) << err;
  EXPECT_EQ(status, 200u);
  EXPECT_EQ(body, "GET /echo?q=1");
  ASSERT_TRUE(admin_request(addr(), "POST", "/purge", &status, &body, &err, kToken)) << err;
  EXPECT_EQ(status, 200u);
  EXPECT_EQ(changes_.load(), 1);
  // The scheme is case-insensitive.
  EXPECT_EQ(send("GET", "/echo", {host(), "Authorization: bearer " + std::string(kToken)}).status,
            200u);
  // The token does not excuse a foreign host name or a form's POST.
  const std::string auth = "Authorization: Bearer " + std::string(kToken);
  EXPECT_EQ(send("GET", "/echo", {"Host: evil.example.com", auth}).status, 421u);
  EXPECT_EQ(send("POST", "/purge",
                 {host(), auth, "Content-Type: application/x-www-form-urlencoded"}, "x=1")
                .status,
            403u);
  EXPECT_EQ(changes_.load(), 1);
}

TEST(AdminListen, RejectsBadAddresses) {
  boost::asio::io_context io;
  AdminServer server(io, [](const std::string&, const std::string&) { return AdminResponse{}; });
  std::string err;
  EXPECT_TRUE(server.listen("nonsense", &err));
  EXPECT_NE(err.find("admin.listen"), std::string::npos);
  EXPECT_TRUE(server.listen("not-an-ip:80", &err));
}

TEST(AdminGet, UnreachableIsAnErrorNotAHang) {
  unsigned status = 0;
  std::string body, err;
  // Port 1 on loopback: nothing listens there.
  EXPECT_FALSE(admin_get("127.0.0.1:1", "/healthz", &status, &body, &err));
  EXPECT_FALSE(err.empty());
}

// ---- background operations (agent/operations.h) through a real server ----

// A gate that an operation's body waits at until the test opens it.
class Gate {
 public:
  void open() {
    std::lock_guard lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  void wait() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return open_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

class AdminOperationsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<AdminServer>(
        io_,
        [this](const std::string& method, const std::string& target) {
          AdminResponse r;
          if (target == "/healthz") {
            r.body = "ok\n";
          } else if (target == "/slowop" && method == "POST") {
            // Three records: one at once, the other two once the gate opens.
            return operation_started(ops_.start("slow", [this](OperationProgress& p) {
              p.set_total(3);
              p.set_done(1);
              slow_gate_.wait();
              p.set_done(3);
              return OperationOutcome{true, "did 3 records"};
            }));
          } else if (target == "/failop" && method == "POST") {
            return operation_started(ops_.start("fail", [](OperationProgress& p) {
              p.set_total(5);
              p.set_done(2);
              return OperationOutcome{false, "the store said no after 2 records"};
            }));
          } else if (target == "/throwop" && method == "POST") {
            return operation_started(
                ops_.start("throw", [](OperationProgress&) -> OperationOutcome {
                  throw std::runtime_error("the body threw");
                }));
          } else if (target == "/slowlist") {
            // Holds the worker thread, as a long dead-letter listing does.
            list_entered_ = true;
            list_gate_.wait();
            r.body = "listed\n";
          } else if (!handle_operations(ops_, method, target, &r)) {
            r.status = 404;
          }
          return r;
        },
        AdminAccess{}, quick_routes());
    std::string err;
    ASSERT_FALSE(server_->listen("127.0.0.1:0", &err)) << err;
    thread_ = std::thread([this] { io_.run(); });
  }
  void TearDown() override {
    slow_gate_.open();
    list_gate_.open();
    if (list_.joinable()) list_.join();
    ops_.close();
    server_->stop();
    io_.stop();
    thread_.join();
  }
  static std::vector<std::string> quick_routes() {
    auto routes = default_quick_routes();
    routes.insert(routes.end(), {"/slowop", "/failop", "/throwop"});
    return routes;
  }
  std::string addr() const { return "127.0.0.1:" + std::to_string(server_->port()); }
  RawResponse post(const std::string& target) {
    return raw_request(server_->port(), http("POST", target,
                                             {"Host: 127.0.0.1:" + std::to_string(server_->port()),
                                              "X-Sidetrace-Request: 1"}));
  }
  // The operation at /operations/<id>, or null when it is not found.
  nlohmann::json get_op(const std::string& id) {
    unsigned status = 0;
    std::string body, err;
    if (!admin_get(addr(), "/operations/" + id, &status, &body, &err) || status != 200) {
      return nullptr;
    }
    return nlohmann::json::parse(body);
  }

  Operations ops_;
  Gate slow_gate_, list_gate_;
  std::atomic<bool> list_entered_{false}, list_answered_{false};
  std::thread list_;
  boost::asio::io_context io_;
  std::unique_ptr<AdminServer> server_;
  std::thread thread_;
};

TEST_F(AdminOperationsTest, AnswersAtOnceThenShowsProgressThenTheResult) {
  // The worker thread is busy with a slow request all along.
  list_ = std::thread([this] {
    unsigned status = 0;
    std::string body, err;
    admin_get(addr(), "/slowlist", &status, &body, &err);
    list_answered_ = status == 200 && body == "listed\n";
  });
  ASSERT_TRUE(wait_until([&] { return list_entered_.load(); }));

  // The body cannot end before the gate opens: the answer comes first.
  RawResponse started = post("/slowop");
  ASSERT_EQ(started.status, 202u) << started.head << started.body;
  auto op = nlohmann::json::parse(started.body);
  const std::string id = op.at("id");
  EXPECT_EQ(op.at("kind"), "slow");
  EXPECT_EQ(op.at("state"), "running");
  EXPECT_NE(started.head.find("location: /operations/" + id), std::string::npos) << started.head;
  EXPECT_NE(started.head.find("content-type: application/json"), std::string::npos);

  unsigned status = 0;
  std::string body, err;
  ASSERT_TRUE(admin_get(addr(), "/healthz", &status, &body, &err)) << err;
  EXPECT_EQ(status, 200u);

  // Progress while it runs.
  ASSERT_TRUE(wait_until([&] {
    auto now = get_op(id);
    return now.is_object() && now.value("done", 0) == 1;
  }));
  op = get_op(id);
  EXPECT_EQ(op.at("state"), "running");
  EXPECT_EQ(op.at("total"), 3);
  EXPECT_EQ(op.at("message"), "");

  // Asked again while it runs: the same operation, 200 rather than 202.
  RawResponse again = post("/slowop");
  EXPECT_EQ(again.status, 200u) << again.body;
  EXPECT_EQ(nlohmann::json::parse(again.body).at("id"), id);
  EXPECT_NE(again.head.find("location: /operations/" + id), std::string::npos);

  slow_gate_.open();
  ASSERT_TRUE(wait_until([&] {
    auto now = get_op(id);
    return now.is_object() && now.value("state", "") != "running";
  }));
  op = get_op(id);
  EXPECT_EQ(op.at("state"), "ok");
  EXPECT_EQ(op.at("done"), 3);
  EXPECT_EQ(op.at("total"), 3);
  EXPECT_EQ(op.at("message"), "did 3 records");

  // Once it ended, asking starts a new one.
  RawResponse next = post("/slowop");
  EXPECT_EQ(next.status, 202u);
  EXPECT_NE(nlohmann::json::parse(next.body).at("id"), id);
  EXPECT_FALSE(list_answered_);  // the slow request held the worker all along
  list_gate_.open();
  list_.join();
  EXPECT_TRUE(list_answered_);
}

TEST_F(AdminOperationsTest, AFailedOperationReportsFailedWithWhy) {
  RawResponse started = post("/failop");
  ASSERT_EQ(started.status, 202u) << started.body;
  const std::string failed_id = nlohmann::json::parse(started.body).at("id");
  started = post("/throwop");
  ASSERT_EQ(started.status, 202u) << started.body;
  const std::string threw_id = nlohmann::json::parse(started.body).at("id");
  ASSERT_TRUE(wait_until([&] {
    auto a = get_op(failed_id), b = get_op(threw_id);
    return a.is_object() && b.is_object() && a.value("state", "") != "running" &&
           b.value("state", "") != "running";
  }));
  auto op = get_op(failed_id);
  EXPECT_EQ(op.at("state"), "failed");
  EXPECT_EQ(op.at("message"), "the store said no after 2 records");
  EXPECT_EQ(op.at("done"), 2);
  EXPECT_EQ(op.at("total"), 5);
  op = get_op(threw_id);
  EXPECT_EQ(op.at("state"), "failed");
  EXPECT_EQ(op.at("message"), "the body threw");
  EXPECT_FALSE(op.contains("done"));  // it reported no counts

  // The list holds both, newest first.
  unsigned status = 0;
  std::string body, err;
  ASSERT_TRUE(admin_get(addr(), "/operations", &status, &body, &err)) << err;
  EXPECT_EQ(status, 200u);
  auto all = nlohmann::json::parse(body).at("operations");
  ASSERT_EQ(all.size(), 2u) << body;
  EXPECT_EQ(all[0].at("id"), threw_id);
  EXPECT_EQ(all[1].at("id"), failed_id);
}

TEST_F(AdminOperationsTest, UnknownOperationsAnswer404AndTheRulesOfPostsHold) {
  unsigned status = 0;
  std::string body, err;
  for (const char* target : {"/operations/999", "/operations/abc", "/operations/"}) {
    ASSERT_TRUE(admin_get(addr(), target, &status, &body, &err)) << err;
    EXPECT_EQ(status, 404u) << target;
  }
  ASSERT_TRUE(admin_request(addr(), "POST", "/operations/1", &status, &body, &err)) << err;
  EXPECT_EQ(status, 405u);
  // Starting one is a POST like any other: a form cannot, another site cannot.
  const std::string host = "Host: " + addr();
  EXPECT_EQ(raw_request(server_->port(), http("POST", "/slowop", {host})).status, 403u);
  EXPECT_EQ(raw_request(server_->port(),
                        http("POST", "/slowop",
                             {host, "X-Sidetrace-Request: 1", "Origin: http://evil.example.com"}))
                .status,
            403u);
  EXPECT_EQ(
      raw_request(server_->port(), http("GET", "/operations", {"Host: evil.example.com:7718"}))
          .status,
      421u);
  EXPECT_TRUE(ops_.list().empty());
}

TEST(Operations, KeepsTheLastFinishedAndRefusesNewOnesOnceClosed) {
  Operations ops(2);
  std::vector<uint64_t> ids;
  for (const char* kind : {"a", "b", "c"}) {
    auto started = ops.start(kind, [kind](OperationProgress&) {
      return OperationOutcome{true, std::string("done ") + kind};
    });
    ASSERT_TRUE(started && started->created);
    ids.push_back(started->op.id);
    ASSERT_TRUE(wait_until([&] {
      auto op = ops.get(ids.back());
      return op && op->state != OperationState::kRunning;
    }));
  }
  EXPECT_FALSE(ops.get(ids[0]));  // forgotten: only the last 2 are kept
  ASSERT_TRUE(ops.get(ids[2]));
  EXPECT_EQ(ops.get(ids[2])->message, "done c");
  EXPECT_EQ(ops.list().size(), 2u);
  // The same kind again, once the last one ended: a new operation.
  auto again = ops.start("c", [](OperationProgress&) { return OperationOutcome{}; });
  ASSERT_TRUE(again && again->created);
  EXPECT_GT(again->op.id, ids[2]);
  ops.close();
  EXPECT_EQ(ops.get(again->op.id)->state, OperationState::kOk);  // close() waited for it
  EXPECT_FALSE(ops.start("d", [](OperationProgress&) { return OperationOutcome{}; }));
  EXPECT_EQ(operation_started(std::nullopt).status, 503u);
}

TEST(Metrics, PrometheusTextFormat) {
  MetricsWriter w;
  w.family("sidetrace_received_total", "counter", "Messages received.");
  w.sample("sidetrace_received_total", uint64_t{5}, {{"transport", "udp"}});
  double bounds[] = {0.001, 0.01};
  uint64_t counts[] = {1, 2, 3};
  w.family("sidetrace_latency_seconds", "histogram", "Latency.");
  w.histogram("sidetrace_latency_seconds", bounds, counts, 1.5);
  const std::string& t = w.text();
  EXPECT_NE(t.find("# TYPE sidetrace_received_total counter\n"), std::string::npos);
  EXPECT_NE(t.find("sidetrace_received_total{transport=\"udp\"} 5\n"), std::string::npos);
  EXPECT_NE(t.find("sidetrace_latency_seconds_bucket{le=\"0.01\"} 3\n"), std::string::npos);
  EXPECT_NE(t.find("sidetrace_latency_seconds_bucket{le=\"+Inf\"} 6\n"), std::string::npos);
  EXPECT_NE(t.find("sidetrace_latency_seconds_count 6\n"), std::string::npos);
}

}  // namespace
}  // namespace sidetrace::agent

#include "agent/admin.h"

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <thread>

#include "agent/metrics.h"

namespace sidetrace::agent {
namespace {

class AdminTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<AdminServer>(
        io_, [this](const std::string& method, const std::string& target) {
          ++calls_;
          AdminResponse r;
          if (target == "/healthz") {
            r.body = "ok\n";
          } else if (target.starts_with("/echo")) {
            r.body = method + " " + target;
          } else {
            r.status = 404;
            r.body = "not found\n";
          }
          return r;
        });
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

  boost::asio::io_context io_;
  std::unique_ptr<AdminServer> server_;
  std::thread thread_;
  std::atomic<int> calls_{0};
};

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
      "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
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

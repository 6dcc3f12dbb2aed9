// The connection pool's keep-alive behaviour, straight on HttpConnection.
#include "upstream/detail/http_client.h"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_future.hpp>

#include "upstream/testing/http_server.h"

namespace sidetrace::upstream::detail {
namespace {

Outcome post_once(net::io_context& io, HttpConnection& c, const std::string& target) {
  http::request<http::string_body> req(http::verb::post, target, 11);
  req.set(http::field::host, "127.0.0.1");
  req.body() = "{}";
  req.prepare_payload();
  auto fut = net::co_spawn(io, c.post(req, 0), net::use_future);
  io.restart();
  io.run();
  return fut.get();
}

TEST(UpstreamHttpClient, ParsesEndpoints) {
  auto e = parse_endpoint("https://example.com:8443/api/");
  EXPECT_TRUE(e.tls);
  EXPECT_EQ(e.host, "example.com");
  EXPECT_EQ(e.port, "8443");
  EXPECT_EQ(e.target, "/api/v1/traces");
  e = parse_endpoint("http://[::1]");
  EXPECT_EQ(e.host, "::1");
  EXPECT_EQ(e.port, "80");
  EXPECT_EQ(e.target, "/v1/traces");
  EXPECT_THROW(parse_endpoint("example.com"), std::invalid_argument);
  EXPECT_THROW(parse_endpoint("http://user:pw@host"), std::invalid_argument);
  EXPECT_THROW(parse_endpoint("http://host:x1"), std::invalid_argument);
}

TEST(UpstreamHttpClient, KeepsTheConnectionAliveAndReconnects) {
  testing::HttpServer server;
  net::io_context io;
  auto cfg = std::make_shared<ConnectionConfig>();
  cfg->endpoint = parse_endpoint(server.url());
  HttpConnection c(io.get_executor(), cfg);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(post_once(io, c, "/v1/traces").kind, OutcomeKind::kSuccess);
  }
  EXPECT_EQ(server.connections(), 1u);
  // The server closes the connection: the next post reconnects transparently.
  server.set_handler([](const testing::RecordedRequest&) {
    testing::Reply r;
    r.headers = {{"Connection", "close"}};
    return r;
  });
  EXPECT_EQ(post_once(io, c, "/v1/traces").kind, OutcomeKind::kSuccess);
  server.set_handler(nullptr);
  EXPECT_EQ(post_once(io, c, "/v1/traces").kind, OutcomeKind::kSuccess);
  EXPECT_EQ(server.connections(), 2u);
}

TEST(UpstreamHttpClient, ClassifiesResponsesAndRefusedConnections) {
  testing::HttpServer server;
  server.set_handler([](const testing::RecordedRequest&) {
    testing::Reply r;
    r.status = 429;
    r.headers = {{"Retry-After", "3"}};
    return r;
  });
  net::io_context io;
  auto cfg = std::make_shared<ConnectionConfig>();
  cfg->endpoint = parse_endpoint(server.url());
  HttpConnection c(io.get_executor(), cfg);
  Outcome o = post_once(io, c, "/v1/traces");
  EXPECT_EQ(o.kind, OutcomeKind::kRetryable);
  EXPECT_EQ(o.http_status, 429);
  EXPECT_EQ(o.retry_after_ms, 3000u);
  server.stop();
  c.close();
  o = post_once(io, c, "/v1/traces");
  EXPECT_EQ(o.kind, OutcomeKind::kRetryable);
  EXPECT_EQ(o.http_status, 0);
}

// A DNS lookup that never answers counts against the connect timeout: the
// post gives up instead of waiting for it.
TEST(UpstreamHttpClient, GivesUpOnAHangingDnsLookupWithinTheConnectTimeout) {
  net::io_context io;
  auto cfg = std::make_shared<ConnectionConfig>();
  cfg->endpoint = parse_endpoint("http://upstream.invalid:4318");
  cfg->connect_timeout_ms = 100;
  ResolveDone pending;
  cfg->resolve_hook = [&pending](ResolveDone done) { pending = std::move(done); };
  HttpConnection c(io.get_executor(), cfg);
  Outcome o = post_once(io, c, "/v1/traces");
  EXPECT_EQ(o.kind, OutcomeKind::kRetryable);
  EXPECT_EQ(o.http_status, 0);
  EXPECT_NE(o.detail.find("resolve: timed out after 100 ms"), std::string::npos) << o.detail;
  EXPECT_FALSE(c.connected());
  // The lookup's late answer is dropped.
  ASSERT_TRUE(pending);
  pending(beast::error_code{}, {});
}

// A lookup that answers goes on to connect within what is left of the
// timeout.
TEST(UpstreamHttpClient, ConnectsWithTheAddressTheLookupGave) {
  testing::HttpServer server;
  net::io_context io;
  auto cfg = std::make_shared<ConnectionConfig>();
  cfg->endpoint = parse_endpoint(server.url());
  cfg->endpoint.host = "upstream.invalid";
  auto port = parse_endpoint(server.url()).port;
  int lookups = 0;
  cfg->resolve_hook = [&](ResolveDone done) {
    ++lookups;
    auto results = net::ip::tcp::resolver::results_type::create(
        net::ip::tcp::endpoint(net::ip::make_address("127.0.0.1"),
                               static_cast<unsigned short>(std::stoi(port))),
        "upstream.invalid", port);
    net::post(io, [done = std::move(done), results] { done(beast::error_code{}, results); });
  };
  HttpConnection c(io.get_executor(), cfg);
  EXPECT_EQ(post_once(io, c, "/v1/traces").kind, OutcomeKind::kSuccess);
  EXPECT_EQ(lookups, 1);
  EXPECT_EQ(server.connections(), 1u);
}

}  // namespace
}  // namespace sidetrace::upstream::detail

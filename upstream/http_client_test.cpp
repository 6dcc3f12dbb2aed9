// The connection pool's keep-alive behaviour, straight on HttpConnection.
#include "upstream/detail/http_client.h"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
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

}  // namespace
}  // namespace sidetrace::upstream::detail

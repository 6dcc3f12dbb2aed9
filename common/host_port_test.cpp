#include "common/host_port.h"

#include <gtest/gtest.h>

namespace sidetrace {
namespace {

TEST(HostPort, ReadsEveryForm) {
  auto a = parse_host_port("127.0.0.1:7718");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, 7718);
  auto b = parse_host_port("collector.example.com");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->host, "collector.example.com");
  EXPECT_FALSE(b->port);
  auto c = parse_host_port("[::1]:0");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->host, "::1");
  EXPECT_EQ(c->port, 0);
  auto d = parse_host_port("[fe80::1%eth0]");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->host, "fe80::1%eth0");
  EXPECT_FALSE(d->port);
  EXPECT_EQ(parse_host_port("localhost:65535")->port, 65535);
}

TEST(HostPort, RefusesWhatCannotBeReadOneWay) {
  for (const char* bad :
       {"", ":7718", "host:", "host:65536", "host:-1", "host:+1", "host:12x", "host: 1", "::1:7718",
        "::1", "[::1", "[::1]7718", "[]:1", "[host]:1", "a:b:c"}) {
    EXPECT_FALSE(parse_host_port(bad)) << bad;
  }
}

}  // namespace
}  // namespace sidetrace

#include "agent/wiring.h"

#include <gtest/gtest.h>

namespace sidetrace::agent {
namespace {

// Every upstream key reaches the delivery options, not only its default.
TEST(WiringTest, UpstreamKeysReachTheDeliveryOptions) {
  config::Config c;
  config::apply_toml_string(c,
                            "[upstream]\n"
                            "endpoint = \"http://127.0.0.1:9\"\n"
                            "compression = \"zstd\"\n"
                            "compression_level = 7\n"
                            "batch_max_events = 17\n"
                            "flush_interval_ms = 33\n"
                            "max_in_flight = 3\n"
                            "retry_initial_ms = 11\n"
                            "retry_max_ms = 222\n"
                            "retry_after_max_ms = 4444\n"
                            "retry_deadline_s = 55\n"
                            "auth_probe_interval_ms = 666\n",
                            "inline.toml");
  upstream::Options o = upstream_options(c);
  EXPECT_EQ(o.endpoint, "http://127.0.0.1:9");
  EXPECT_EQ(o.compression_level, 7);
  EXPECT_EQ(o.batch_max_events, 17u);
  EXPECT_EQ(o.flush_interval_ms, 33u);
  EXPECT_EQ(o.max_in_flight, 3u);
  EXPECT_EQ(o.retry_initial_ms, 11u);
  EXPECT_EQ(o.retry_max_ms, 222u);
  EXPECT_EQ(o.retry_after_max_ms, 4444u);
  EXPECT_EQ(o.retry_deadline_s, 55u);
  EXPECT_EQ(o.auth_probe_interval_ms, 666u);
}

}  // namespace
}  // namespace sidetrace::agent

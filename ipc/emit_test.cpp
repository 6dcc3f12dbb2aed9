#include "ipc/emit.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <boost/asio/post.hpp>
#include <chrono>
#include <filesystem>
#include <sstream>
#include <thread>

#include "ipc/event.h"
#include "ipc/intake.h"

namespace sidetrace::ipc {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;

TEST(IpcEmit, ParsesEndpoints) {
  Endpoint ep;
  std::string err;
  ASSERT_TRUE(parse_endpoint("unix:///run/sidetrace/s.sock", &ep, &err));
  EXPECT_EQ(ep.type, Endpoint::Type::kUnixStream);
  EXPECT_EQ(ep.path, "/run/sidetrace/s.sock");
  ASSERT_TRUE(parse_endpoint("unixgram:///tmp/d.sock", &ep, &err));
  EXPECT_EQ(ep.type, Endpoint::Type::kUnixDgram);
  ASSERT_TRUE(parse_endpoint("udp://127.0.0.1:7717", &ep, &err));
  EXPECT_EQ(ep.type, Endpoint::Type::kUdp);
  EXPECT_EQ(ep.host, "127.0.0.1");
  EXPECT_EQ(ep.port, 7717);
  ASSERT_TRUE(parse_endpoint("udp://[::1]:9", &ep, &err));
  EXPECT_EQ(ep.host, "::1");
  for (const char* bad : {"tcp://x:1", "udp://host", "udp://h:0", "udp://h:70000", "udp://:5",
                          "unix://", "udp://h:12x"}) {
    EXPECT_FALSE(parse_endpoint(bad, &ep, &err)) << bad;
  }
  EXPECT_EQ(endpoint_url("unix:///x"), "unix:///x");
  ::setenv(kEndpointEnv, "udp://10.0.0.1:5", 1);
  EXPECT_EQ(endpoint_url(""), "udp://10.0.0.1:5");
  ::unsetenv(kEndpointEnv);
  EXPECT_EQ(endpoint_url(""), kDefaultEndpoint);
}

TEST(IpcEmit, NeverHangsWhenNoAgentListens) {
  for (const char* url : {"unix:///tmp/st-nobody-here.sock", "unixgram:///tmp/st-nobody.sock"}) {
    EmitOptions o;
    o.endpoint = url;
    o.kind = "trace";
    o.trace_id = "t1";
    std::istringstream in;
    std::ostringstream err;
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(run_emit(o, in, err), 3) << url;
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
    EXPECT_NE(err.str().find("dropped"), std::string::npos);
  }
}

TEST(IpcEmit, BadInputIsRefusedWithAReason) {
  EmitOptions o;
  o.endpoint = "udp://127.0.0.1:9";
  o.kind = "start";
  o.trace_id = "t";
  std::istringstream none;
  std::ostringstream err;
  EXPECT_EQ(run_emit(o, none, err), 2);  // start without id and type
  EXPECT_NE(err.str().find("missing_key"), std::string::npos) << err.str();

  o.json_lines = true;
  std::istringstream lines("{\"kind\":\"trace\",\"trace_id\":\"t\"}\n{not json\n");
  err.str("");
  EXPECT_EQ(run_emit(o, lines, err), 2);
  EXPECT_NE(err.str().find("line 2"), std::string::npos) << err.str();
  std::istringstream wrong("[1,2]\n");
  EXPECT_EQ(run_emit(o, wrong, err), 2);
  o.endpoint = "bogus";
  EXPECT_EQ(run_emit(o, none, err), 2);
}

class EmitRoundTrip : public ::testing::Test {
 protected:
  EmitRoundTrip() : queue_(1 << 24) {
    char tmpl[] = "/tmp/st-emit-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    IntakeOptions o;
    o.unix_stream = dir_ + "/s.sock";
    o.unix_dgram = dir_ + "/d.sock";
    o.udp = "127.0.0.1:0";
    intake_ = Intake::create(ioc_, o, queue_, system_clock());
    std::string err;
    EXPECT_FALSE(intake_->start(&err)) << err;
    thread_ = std::thread([this] { ioc_.run(); });
  }
  ~EmitRoundTrip() override {
    asio::post(ioc_, [this] { intake_->stop(); });
    thread_.join();
    std::filesystem::remove_all(dir_);
  }
  std::vector<Message> take(size_t n) {
    std::vector<Message> out;
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (out.size() < n && std::chrono::steady_clock::now() < deadline) {
      std::vector<MessageBatch> batches;
      queue_.pop_all(batches, 20ms);
      for (auto& b : batches)
        for (auto& m : b)
          out.push_back(std::move(m));
    }
    return out;
  }
  std::string dir_;
  asio::io_context ioc_;
  BoundedQueue<MessageBatch> queue_;
  std::unique_ptr<Intake> intake_;
  std::thread thread_;
};

TEST_F(EmitRoundTrip, FlagsAndJsonLinesThroughEachTransport) {
  const std::string urls[] = {"unix://" + dir_ + "/s.sock", "unixgram://" + dir_ + "/d.sock",
                              "udp://127.0.0.1:" + std::to_string(intake_->udp_port())};
  for (const auto& url : urls) {
    EmitOptions o;
    o.endpoint = url;
    o.kind = "event";
    o.trace_id = "trace-1";
    o.id = "e1";
    o.type = "TOOL";
    o.name = "search";
    o.input = "{\"q\":\"weather\"}";
    o.json_values = true;
    o.output = "[1,2]";
    o.status = "error";
    o.error = "timeout";
    o.ts_ns = 1'700'000'000'000'000'000ull;
    o.latency_ms = 12;
    o.attrs_json = R"({"model":"m1"})";
    std::istringstream none;
    std::ostringstream err;
    ASSERT_EQ(run_emit(o, none, err), 0) << url << ": " << err.str();
    auto got = take(1);
    ASSERT_EQ(got.size(), 1u) << url;
    Event ev;
    Reject r;
    std::string detail;
    ASSERT_TRUE(decode_event(got[0].raw, {}, &ev, &r, &detail)) << detail;
    EXPECT_EQ(ev.trace_id, "trace-1");
    EXPECT_EQ(ev.type, "TOOL");
    EXPECT_EQ(ev.error, std::optional<bool>(true));
    EXPECT_EQ(ev.error_text, "timeout");
    EXPECT_EQ(ev.ts_ns, o.ts_ns);
    EXPECT_EQ(ev.latency_ms, std::optional<int64_t>(12));
    EXPECT_FALSE(ev.attrs.empty());
    EXPECT_FALSE(ev.input.empty());

    EmitOptions lines_opt;
    lines_opt.endpoint = url;
    lines_opt.json_lines = true;
    std::istringstream lines(
        "{\"kind\":\"start\",\"trace_id\":\"t2\",\"id\":\"a\",\"type\":\"AGENT\",\"ts\":5}\n"
        "\n"
        "{\"kind\":\"end\",\"trace_id\":\"t2\",\"id\":\"a\",\"output\":{\"x\":1}}\n"
        "{\"kind\":\"feedback\",\"trace_id\":\"t2\",\"score\":0.5,\"tag\":\"up\"}\n");
    ASSERT_EQ(run_emit(lines_opt, lines, err), 0) << err.str();
    got = take(3);
    ASSERT_EQ(got.size(), 3u) << url;
    EXPECT_EQ(got[0].kind, Kind::kStart);
    EXPECT_EQ(got[1].kind, Kind::kEnd);
    EXPECT_EQ(got[2].kind, Kind::kFeedback);
  }
}

}  // namespace
}  // namespace sidetrace::ipc

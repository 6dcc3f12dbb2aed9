#include "agent/tail.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <functional>
#include <future>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <streambuf>
#include <thread>

#include "agent/admin.h"
#include "agent/viewer.h"
#include "common/wait_until.h"

namespace sidetrace::agent {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

// An ostream target that one thread writes while another reads.
class SharedText : public std::streambuf {
 public:
  std::string text() const {
    std::lock_guard lock(mu_);
    return text_;
  }

 protected:
  int_type overflow(int_type c) override {
    if (c != traits_type::eof()) {
      std::lock_guard lock(mu_);
      text_.push_back(static_cast<char>(c));
    }
    return c;
  }
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    std::lock_guard lock(mu_);
    text_.append(s, static_cast<size_t>(n));
    return n;
  }

 private:
  mutable std::mutex mu_;
  std::string text_;
};

json event(const std::string& id, const std::string& type, const std::string& name, double ms,
           const std::string& status = "ok", json children = json::array()) {
  return json{{"id", id},
              {"parent_id", nullptr},
              {"type", type},
              {"name", name},
              {"input", nullptr},
              {"output", nullptr},
              {"start_ts", 1700000000000000000ull},
              {"end_ts", 1700000000000000000ull + static_cast<uint64_t>(ms * 1e6)},
              {"duration_ms", ms},
              {"status", status},
              {"error", status == "error" ? json("rate limited") : json(nullptr)},
              {"attrs", json::object()},
              {"orphan", false},
              {"unfinished", false},
              {"changed", true},
              {"children", std::move(children)}};
}

std::string doc(const std::string& trace_id, const std::string& session, bool error,
                json feedback = json::array()) {
  json events = json::array(
      {event("a1", "AGENT", "answer", 812, "ok",
             json::array({event("g1", "GENERATION", "llm", 790.5, error ? "error" : "ok"),
                          event("t1", "TOOL", "calc", 0.25)}))});
  json d = {{"trace_id", trace_id},
            {"revision", 1},
            {"conversation_id", "c-17"},
            {"session_id", session},
            {"interaction_id", nullptr},
            {"channel_id", nullptr},
            {"user", {{"id", "u-42"}}},
            {"metadata", json::object()},
            {"start_ts", 1700000000000000000ull},
            {"end_ts", 1700000000812000000ull},
            {"duration_ms", 812},
            {"status", error ? "error" : "ok"},
            {"partial", false},
            {"trace_changed", true},
            {"events", std::move(events)},
            {"feedback", std::move(feedback)}};
  return d.dump();
}

TEST(RenderTraceText, IndentedTreeWithErrorsAndFeedback) {
  json fb = json::array({json{{"tag", "thumbs"},
                              {"text", "great"},
                              {"score", 1},
                              {"target_id", "g1"},
                              {"ts", 1700000060000000000ull}},
                         json{{"tag", "flag"},
                              {"text", nullptr},
                              {"score", nullptr},
                              {"target_id", nullptr},
                              {"ts", 1700000070000000000ull}}});
  std::string text;
  ASSERT_TRUE(render_trace_text(doc("4bf92f", "s1", true, fb), false, &text));
  EXPECT_EQ(text,
            "trace 4bf92f  rev 1  2023-11-14T22:13:20.000Z  812.0 ms  error  conversation=c-17  "
            "session=s1  user=u-42\n"
            "  AGENT answer  812.0 ms  ok\n"
            "    GENERATION llm  790.5 ms  error  ! rate limited\n"
            "    TOOL calc  0.250 ms  ok\n"
            "  feedback  thumbs  score=1  \"great\"  on g1\n"
            "  feedback  flag  on the trace\n");
}

TEST(RenderTraceText, ColorMarksErrorsAndControlCharactersAreNeutralised) {
  std::string text;
  ASSERT_TRUE(render_trace_text(doc("t", "s", true), true, &text));
  EXPECT_NE(text.find("\x1b[1;31merror\x1b[0m"), std::string::npos);
  EXPECT_NE(text.find("\x1b[1;31m! rate limited\x1b[0m"), std::string::npos);
  json d = json::parse(doc("t", "s", false));
  d["events"][0]["name"] = "evil\x1b[2Jname\nnext";
  ASSERT_TRUE(render_trace_text(d.dump(), false, &text));
  EXPECT_NE(text.find("AGENT evil?[2Jname next  812.0 ms  ok\n"), std::string::npos);
  EXPECT_EQ(text.find('\x1b'), std::string::npos);
  EXPECT_FALSE(render_trace_text("not json", false, &text));
  EXPECT_FALSE(render_trace_text("{\"x\":1}", false, &text));
}

// A real admin server on loopback that serves the viewer's routes.
class TailTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<AdminServer>(
        io_, [this](const std::string& method, const std::string& target) {
          AdminResponse r;
          if (!serve_viewer_ || !handle_viewer(traces_, method, target, &r)) {
            r = AdminResponse{404, "text/plain", "not found\n"};
          }
          // Counted once answered: a trace added after the count is newer
          // than what the answer holds.
          if (target.starts_with("/api/traces?")) ++list_requests_;
          return r;
        });
    std::string err;
    ASSERT_FALSE(server_->listen("127.0.0.1:0", &err)) << err;
    thread_ = std::thread([this] { io_.run(); });
    opts_.admin = "127.0.0.1:" + std::to_string(server_->port());
    opts_.interval = 10ms;
    opts_.color = false;
    opts_.last = 0;
  }
  void TearDown() override {
    server_->stop();
    io_.stop();
    thread_.join();
  }

  // Runs run_tail on its own thread.
  std::future<int> start() {
    return std::async(std::launch::async, [this] { return run_tail(opts_, out_, err_); });
  }

  boost::asio::io_context io_;
  std::unique_ptr<AdminServer> server_;
  std::thread thread_;
  RecentTraces traces_;
  std::atomic<int> list_requests_{0};
  std::atomic<bool> serve_viewer_{true};
  TailOptions opts_;
  SharedText out_buf_, err_buf_;
  std::ostream out_{&out_buf_}, err_{&err_buf_};
};

TEST_F(TailTest, LastPrintsTheMostRecentOldestFirstAndCountEnds) {
  for (const char* id : {"t1", "t2", "t3"})
    ASSERT_TRUE(traces_.add(id, 1, doc(id, "s1", false)));
  opts_.last = 2;
  opts_.count = 2;
  auto rc = start();
  ASSERT_EQ(rc.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(rc.get(), 0);
  std::string text = out_buf_.text();
  size_t t2 = text.find("trace t2"), t3 = text.find("trace t3");
  ASSERT_NE(t2, std::string::npos) << text;
  ASSERT_NE(t3, std::string::npos) << text;
  EXPECT_LT(t2, t3);
  EXPECT_EQ(text.find("trace t1"), std::string::npos);
  EXPECT_NE(text.find("    GENERATION llm  790.5 ms  ok\n"), std::string::npos);
}

TEST_F(TailTest, FollowsNewTracesThroughFilters) {
  opts_.session = "s1";
  opts_.errors_only = true;
  opts_.count = 2;
  ASSERT_TRUE(traces_.add("before", 1, doc("before", "s1", true)));  // older than the tail
  auto rc = start();
  ASSERT_TRUE(wait_until([&] { return list_requests_.load() >= 1; }));
  ASSERT_TRUE(traces_.add("other-session", 1, doc("other-session", "s2", true)));
  ASSERT_TRUE(traces_.add("no-error", 1, doc("no-error", "s1", false)));
  ASSERT_TRUE(traces_.add("first", 1, doc("first", "s1", true)));
  ASSERT_TRUE(wait_until([&] { return out_buf_.text().find("trace first") != std::string::npos; }));
  // A new revision of a followed trace is printed again.
  json fb = json::array({json{{"tag", "late"},
                              {"text", nullptr},
                              {"score", 0.5},
                              {"target_id", nullptr},
                              {"ts", 1700000090000000000ull}}});
  ASSERT_TRUE(traces_.add("first", 2, doc("first", "s1", true, fb)));
  ASSERT_EQ(rc.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(rc.get(), 0);
  std::string text = out_buf_.text();
  EXPECT_EQ(text.find("before"), std::string::npos) << text;
  EXPECT_EQ(text.find("other-session"), std::string::npos) << text;
  EXPECT_EQ(text.find("no-error"), std::string::npos) << text;
  EXPECT_NE(text.find("  feedback  late  score=0.5  on the trace\n"), std::string::npos) << text;
}

TEST_F(TailTest, StopsOnSigterm) {
  auto rc = start();
  ASSERT_TRUE(wait_until([&] { return list_requests_.load() >= 2; }));  // signal handler installed
  ASSERT_EQ(::kill(::getpid(), SIGTERM), 0);
  ASSERT_EQ(rc.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(rc.get(), 0);
}

TEST_F(TailTest, NoAdminAddressOrAnUnreachableAgentIsAnError) {
  TailOptions bad = opts_;
  bad.admin = "";
  EXPECT_EQ(run_tail(bad, out_, err_), 2);
  auto port = server_->port();
  server_->stop();
  bad.admin = "127.0.0.1:" + std::to_string(port);
  EXPECT_EQ(run_tail(bad, out_, err_), 3);
  EXPECT_NE(err_buf_.text().find("cannot reach"), std::string::npos) << err_buf_.text();
}

TEST_F(TailTest, AnEndpointWithoutTheViewerIsReported) {
  serve_viewer_ = false;
  EXPECT_EQ(run_tail(opts_, out_, err_), 3);
  EXPECT_NE(err_buf_.text().find("answered 404"), std::string::npos) << err_buf_.text();
}

}  // namespace
}  // namespace sidetrace::agent

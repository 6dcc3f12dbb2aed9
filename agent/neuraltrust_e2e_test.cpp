// The seed page's three examples (Basic Usage, Event Types, Nested Tracing)
// written with the C++ SDK, through the `sidetrace` binary as users run it,
// with `upstream.format = "neuraltrust"`, to the project's HTTP server on
// loopback: every field of every request the agent sends is checked.
//
// The page's calls take "now"; here each start, end and feedback names its
// time, so that every timestamp and latency has one right value. The times
// are not whole milliseconds, and the latencies are the events' own spans
// rounded down, which differ from end - start in whole milliseconds.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sidetrace/client.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "common/wait_until.h"
#include "upstream/detail/neuraltrust.h"
#include "upstream/testing/http_server.h"

namespace fs = std::filesystem;
namespace st = sidetrace::client;
using sidetrace::wait_until;
using sidetrace::upstream::testing::HttpServer;
using sidetrace::upstream::testing::RecordedRequest;
using ojson = nlohmann::ordered_json;
using namespace std::chrono_literals;

namespace {

const char* kBin = SIDETRACE_BIN;

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The binary in its own temp dir, its upstream the given endpoint.
class Agent {
 public:
  Agent(fs::path dir, const std::string& endpoint) : dir_(std::move(dir)) {
    env_ = {"SIDETRACE_DATA_DIR=" + (dir_ / "data").string(),
            "SIDETRACE_LISTEN_UNIX_STREAM=" + socket(),
            "SIDETRACE_LISTEN_UNIX_DGRAM=",
            "SIDETRACE_LISTEN_UDP=",
            "SIDETRACE_LISTEN_OTLP_HTTP=",
            "SIDETRACE_ADMIN_LISTEN=",
            "SIDETRACE_TRACE_QUIET_PERIOD_MS=100",
            "SIDETRACE_BUFFER_SYNC=os",
            "SIDETRACE_UPSTREAM_ENDPOINT=" + endpoint,
            "SIDETRACE_UPSTREAM_FORMAT=neuraltrust",
            "SIDETRACE_UPSTREAM_API_KEY_ENV=NT_E2E_API_KEY",
            "NT_E2E_API_KEY=nt-e2e-key"};
    pid_ = ::fork();
    if (pid_ == 0) {
      int fe = ::open((dir_ / "agent.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      ::dup2(fe, 1);
      ::dup2(fe, 2);
      for (auto& e : env_)
        ::putenv(e.data());
      ::execl(kBin, kBin, "agent", static_cast<char*>(nullptr));
      ::_exit(127);
    }
  }
  ~Agent() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  std::string socket() const { return (dir_ / "agent.sock").string(); }
  std::string log() const { return slurp(dir_ / "agent.log"); }
  bool ready() const { return log().find("sidetrace ready") != std::string::npos; }
  // SIGTERM, then the exit status (-1 when it does not exit in time).
  int stop() {
    ::kill(pid_, SIGTERM);
    int status = -1;
    bool done = wait_until([&] {
      int st = 0;
      if (::waitpid(pid_, &st, WNOHANG) != pid_) return false;
      status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      return true;
    });
    if (done) pid_ = -1;
    return status;
  }

 private:
  fs::path dir_;
  std::vector<std::string> env_;
  pid_t pid_ = -1;
};

// One request as the NeuralTrust SDK would have sent it.
struct Want {
  std::string id;  // the event id (the feedback's is derived)
  std::string task;
  ojson parent_id;
  ojson input, output;
  ojson feedback_tag, feedback_text;
  ojson start_ms, end_ms, latency;
};

// The trace-level fields, the same in every request of a trace.
struct TraceWant {
  std::string trace_id;
  ojson conversation_id, session_id, channel_id, user, metadata;
};

ojson body(const TraceWant& t, const Want& w) {
  ojson b = ojson::object();
  b["trace_id"] = w.id;
  b["interaction_id"] = t.trace_id;
  b["conversation_id"] = t.conversation_id;
  b["session_id"] = t.session_id;
  b["channel_id"] = t.channel_id;
  b["parent_id"] = w.parent_id;
  b["type"] = "traces";
  b["task"] = w.task;
  b["input"] = w.input;
  b["output"] = w.output;
  b["feedback_tag"] = w.feedback_tag;
  b["feedback_text"] = w.feedback_text;
  b["start_timestamp"] = w.start_ms;
  b["end_timestamp"] = w.end_ms;
  b["latency"] = w.latency;
  b["user"] = t.user;
  b["metadata"] = t.metadata;
  b["custom"] = nullptr;
  return b;
}

class NeuralTrustEndToEndTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("sidetrace-nt-e2e-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(NeuralTrustEndToEndTest, TheSeedPagesExamplesArriveAsTheSdkSendsThem) {
  HttpServer server;
  Agent agent(dir_, server.url());
  ASSERT_TRUE(wait_until([&] { return agent.ready(); }, 15s)) << agent.log();

  // A whole second a minute ago, so that ms = base_ms + offset.
  const uint64_t base_ms = (st::now_ns() / 1'000'000'000 - 60) * 1000;
  const uint64_t base = base_ms * 1'000'000;
  auto at = [&](uint64_t us) { return base + us * 1000 + 123; };  // µs after base, +123 ns

  st::Client client({.endpoint = "unix://" + agent.socket()});

  // 1. Basic Usage.
  st::Trace basic = client.trace({.conversation_id = "conv_123", .session_id = "session_123"});
  st::Event weather = basic.message("User: What's the weather?", {.ts_ns = at(1'500)});
  weather.end("Bot: It's sunny!", {.ts_ns = at(812'000)});

  // 2. Event Types, on a trace of their own with no context: in the order of
  // the page, the message ends before its children start.
  st::Trace types = client.trace();
  st::Event message = types.message("User input", {.ts_ns = at(0)});
  message.end("Bot response", {.ts_ns = at(10'000)});
  st::Event tool = message.tool("Calling weather API", {.ts_ns = at(20'000)});
  tool.end("API response received", {.ts_ns = at(29'999)});
  st::Event generation = message.generation("Generating response", {.ts_ns = at(30'000)});
  generation.end("Response generated", {.ts_ns = at(430'500)});
  st::Event agent_ev = message.agent("Planning next action", {.ts_ns = at(431'000)});
  agent_ev.end("Decided to search database", {.ts_ns = at(440'000)});
  st::Event retrieval = message.retrieval("Searching knowledge base", {.ts_ns = at(441'000)});
  retrieval.end("Found 3 relevant documents", {.ts_ns = at(502'250)});
  st::Event system = types.system("Initializing cache", {.ts_ns = at(503'000)});
  system.end("Cache warmed up", {.ts_ns = at(553'000)});
  types.feedback(
      {.tag = "THUMBS_UP", .text = "User marked response as helpful", .ts_ns = at(2'000'000)});

  // 3. Nested Tracing.
  st::Trace nested = client.trace({.conversation_id = "conv_123",
                                   .metadata = {{"environment", "production"}},
                                   .user = {{"id", "user_123"}}});
  st::Event nn = nested.message("User: Tell me about neural networks", {.ts_ns = at(100)});
  st::Event docs = nn.retrieval("Searching documentation", {.ts_ns = at(2'000)});
  docs.end("Found 2 relevant articles", {.ts_ns = at(52'700)});
  st::Event explain = nn.generation("Creating explanation", {.ts_ns = at(53'000)});
  explain.end("Generated response about neural networks", {.ts_ns = at(900'000)});
  nn.end("Bot: Neural networks are...", {.ts_ns = at(901'000)});

  ASSERT_TRUE(client.close(5s));
  ASSERT_TRUE(wait_until([&] { return server.request_count() >= 11; }, 30s)) << agent.log();
  EXPECT_EQ(agent.stop(), 0) << agent.log();

  auto ms = [&](uint64_t us) { return ojson(base_ms + us / 1000); };
  const ojson null;
  std::map<std::string, std::vector<Want>> want;
  std::map<std::string, TraceWant> traces;
  traces[basic.trace_id()] = {basic.trace_id(), "conv_123", "session_123", null, null, null};
  want[basic.trace_id()] = {
      {weather.id(), "message", null, "User: What's the weather?", "Bot: It's sunny!", null, null,
       ms(1'500), ms(812'000), 810},
  };
  // No conversation: the trace is a conversation of its own.
  traces[types.trace_id()] = {types.trace_id(), types.trace_id(), null, null, null, null};
  const std::string feedback_id = sidetrace::upstream::detail::neuraltrust_feedback_id(
      types.trace_id(), ojson{{"tag", "THUMBS_UP"},
                              {"text", "User marked response as helpful"},
                              {"score", nullptr},
                              {"target_id", nullptr},
                              {"ts", at(2'000'000)}}
                            .dump());
  ASSERT_EQ(feedback_id.size(), 32u);
  want[types.trace_id()] = {
      {message.id(), "message", null, "User input", "Bot response", null, null, ms(0), ms(10'000),
       10},
      {tool.id(), "tool", message.id(), "Calling weather API", "API response received", null, null,
       ms(20'000), ms(29'999), 9},
      {generation.id(), "generation", message.id(), "Generating response", "Response generated",
       null, null, ms(30'000), ms(430'500), 400},
      {agent_ev.id(), "agent", message.id(), "Planning next action", "Decided to search database",
       null, null, ms(431'000), ms(440'000), 9},
      {retrieval.id(), "retrieval", message.id(), "Searching knowledge base",
       "Found 3 relevant documents", null, null, ms(441'000), ms(502'250), 61},
      {system.id(), "system", null, "Initializing cache", "Cache warmed up", null, null,
       ms(503'000), ms(553'000), 50},
      {feedback_id, "feedback", null, null, null, "THUMBS_UP", "User marked response as helpful",
       ms(2'000'000), ms(2'000'000), null},
  };
  traces[nested.trace_id()] = {nested.trace_id(),
                               "conv_123",
                               null,
                               null,
                               {{"id", "user_123"}},
                               {{"environment", "production"}}};
  want[nested.trace_id()] = {
      {nn.id(), "message", null, "User: Tell me about neural networks",
       "Bot: Neural networks are...", null, null, ms(100), ms(901'000), 900},
      {docs.id(), "retrieval", nn.id(), "Searching documentation", "Found 2 relevant articles",
       null, null, ms(2'000), ms(52'700), 50},
      {explain.id(), "generation", nn.id(), "Creating explanation",
       "Generated response about neural networks", null, null, ms(53'000), ms(900'000), 847},
  };

  // Each trace's requests in the order they arrived.
  std::map<std::string, std::vector<ojson>> got;
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 11u);
  for (const RecordedRequest& r : reqs) {
    EXPECT_EQ(r.method, "POST");
    EXPECT_EQ(r.target, "/v1/trace");
    EXPECT_EQ(r.header("token"), "nt-e2e-key");
    EXPECT_EQ(r.header("content-type"), "application/json");
    EXPECT_EQ(r.header("content-encoding"), "");
    ojson b = ojson::parse(r.body);
    got[b["interaction_id"].get<std::string>()].push_back(std::move(b));
  }
  ASSERT_EQ(got.size(), 3u);
  for (auto& [trace_id, wants] : want) {
    const auto& bodies = got[trace_id];
    ASSERT_EQ(bodies.size(), wants.size()) << trace_id;
    for (size_t i = 0; i < wants.size(); ++i) {
      // Equal as ordered JSON: every field, in the documented order.
      EXPECT_EQ(bodies[i], body(traces[trace_id], wants[i]))
          << "request " << i << " of trace " << trace_id << "\n got " << bodies[i].dump();
    }
  }
}

}  // namespace

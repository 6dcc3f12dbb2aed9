// The neuraltrust format: the mapping of hand-built trace documents to
// request bodies, field by field, and its delivery (one request per event
// and feedback item) against a real RocksDB store and a real HTTP server on
// loopback. The seed page's examples through the whole agent are in
// agent/neuraltrust_e2e_test.cpp.
#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "buffer/store.h"
#include "upstream/detail/neuraltrust.h"
#include "upstream/detail/records.h"
#include "upstream/testing/http_server.h"
#include "upstream/testing/store_helpers.h"
#include "upstream/upstream.h"

namespace sidetrace::upstream {
namespace {

using ojson = nlohmann::ordered_json;
using testing::emit_doc;
using testing::HttpServer;
using testing::make_doc;
using testing::RecordedRequest;
using testing::Reply;
using testing::wait_until;

std::string sha256_hex32(const std::string& in) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(in.data(), in.size(), md, &len, EVP_sha256(), nullptr);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < 16; ++i) {
    out.push_back(kHex[md[i] >> 4]);
    out.push_back(kHex[md[i] & 15]);
  }
  return out;
}

detail::NeuralTrustRequests map(const std::string& doc) {
  detail::NeuralTrustRequests r;
  std::string error;
  EXPECT_TRUE(detail::neuraltrust_requests(doc, &r, &error)) << error;
  EXPECT_EQ(r.bodies.size(), r.ids.size());
  return r;
}

// A body equals `want` key by key and in the same key order.
void expect_body(const std::string& body, const std::string& want) {
  ojson got = ojson::parse(body);
  ojson w = ojson::parse(want);
  EXPECT_EQ(got, w) << "got  " << got.dump() << "\nwant " << w.dump();
}

// A document with every kind of event: a tree (MESSAGE > RETRIEVAL,
// GENERATION > custom type), a root SYSTEM event still open, an orphan whose
// end precedes its start, JSON values that are not strings, an error, and
// feedback for the whole trace and for one event.
const char* kTreeDoc = R"({
 "trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","revision":1,
 "conversation_id":"conv_123","session_id":"session_123","interaction_id":null,
 "channel_id":"web","user":{"id":"user_123","plan":"pro"},
 "metadata":{"environment":"production","region":"eu"},
 "start_ts":1700000000000500000,"end_ts":1700000000900000000,"duration_ms":899.5,
 "status":"error","partial":false,"part":null,
 "events":[
  {"id":"m1","parent_id":null,"type":"MESSAGE","name":null,
   "input":"User: Tell me about neural networks","output":"Bot: Neural networks are...",
   "start_ts":1700000000001234567,"end_ts":1700000000812000001,"duration_ms":810.765434,
   "status":"ok","error":null,"attrs":{},"orphan":false,"unfinished":false,"children":[
    {"id":"r1","parent_id":"m1","type":"RETRIEVAL","name":null,
     "input":"Searching documentation","output":"Found 2 relevant articles",
     "start_ts":1700000000010000000,"end_ts":1700000000060999999,"duration_ms":50.999999,
     "status":"ok","error":null,"attrs":{},"orphan":false,"unfinished":false,"children":[]},
    {"id":"g1","parent_id":"m1","type":"GENERATION","name":"llm",
     "input":[{"role":"user","content":"hi"}],"output":{"text":"4","n":1.5},
     "start_ts":1700000000070000000,"end_ts":1700000000800500000,"duration_ms":730.5,
     "status":"error","error":"timeout","attrs":{"model":"m"},"orphan":false,
     "unfinished":false,"children":[
      {"id":"c1","parent_id":"g1","type":"lookup_cache","name":null,"input":42,"output":true,
       "start_ts":1700000000100000000,"end_ts":1700000000100000000,"duration_ms":0,
       "status":"ok","error":null,"attrs":{},"orphan":false,"unfinished":false,"children":[]}]}]},
  {"id":"s1","parent_id":null,"type":"SYSTEM","name":null,"input":"Initializing cache",
   "output":null,"start_ts":1700000000000500000,"end_ts":null,"duration_ms":null,
   "status":"ok","error":null,"attrs":{},"orphan":false,"unfinished":true,"children":[]},
  {"id":"o1","parent_id":"gone","type":"TOOL","name":null,"input":null,"output":null,
   "start_ts":1700000000900000000,"end_ts":1700000000899000000,"duration_ms":0,
   "status":"ok","error":null,"attrs":{},"orphan":true,"unfinished":false,"children":[]}],
 "feedback":[
  {"tag":"THUMBS_UP","text":"User marked response as helpful","score":1,"target_id":null,
   "ts":1700000060000000000},
  {"tag":"WRONG_SOURCE","text":null,"score":0,"target_id":"g1","ts":1700000061000000001}]})";

// The trace-level fields every body of kTreeDoc repeats.
std::string tree_body(const std::string& id, const std::string& parent, const std::string& task,
                      const std::string& middle, const std::string& custom) {
  return R"({"trace_id":")" + id +
         R"(","interaction_id":"4bf92f3577b34da6a3ce929d0e0e4736","conversation_id":"conv_123",)"
         R"("session_id":"session_123","channel_id":"web","parent_id":)" +
         parent + R"(,"type":"traces","task":")" + task + "\"," + middle +
         R"(,"user":{"id":"user_123","plan":"pro"},)"
         R"("metadata":{"environment":"production","region":"eu"},"custom":)" +
         custom + "}";
}

TEST(NeuralTrustMappingTest, EveryFieldOfEveryEventAndFeedbackItem) {
  detail::NeuralTrustRequests r = map(kTreeDoc);
  const std::string fb1 = sha256_hex32(
      "4bf92f3577b34da6a3ce929d0e0e4736\n"
      R"(["THUMBS_UP","User marked response as helpful",1,null,1700000060000000000])");
  const std::string fb2 = sha256_hex32(
      "4bf92f3577b34da6a3ce929d0e0e4736\n"
      R"(["WRONG_SOURCE",null,0,"g1",1700000061000000001])");
  // Parents before children, then the feedback.
  ASSERT_EQ(r.ids, (std::vector<std::string>{"m1", "r1", "g1", "c1", "s1", "o1", fb1, fb2}));
  EXPECT_EQ(r.events, 6u);
  expect_body(r.bodies[0],
              tree_body("m1", "null", "message",
                        R"("input":"User: Tell me about neural networks",)"
                        R"("output":"Bot: Neural networks are...",)"
                        R"("feedback_tag":null,"feedback_text":null,)"
                        R"("start_timestamp":1700000000001,"end_timestamp":1700000000812,)"
                        R"("latency":810)",
                        "null"));
  expect_body(r.bodies[1], tree_body("r1", R"("m1")", "retrieval",
                                     R"("input":"Searching documentation",)"
                                     R"("output":"Found 2 relevant articles",)"
                                     R"("feedback_tag":null,"feedback_text":null,)"
                                     R"("start_timestamp":1700000000010,)"
                                     R"("end_timestamp":1700000000060,"latency":50)",
                                     "null"));
  // JSON values that are not strings go as their JSON text; an error goes
  // in `custom`.
  expect_body(r.bodies[2], tree_body("g1", R"("m1")", "generation",
                                     R"("input":"[{\"role\":\"user\",\"content\":\"hi\"}]",)"
                                     R"("output":"{\"text\":\"4\",\"n\":1.5}",)"
                                     R"("feedback_tag":null,"feedback_text":null,)"
                                     R"("start_timestamp":1700000000070,)"
                                     R"("end_timestamp":1700000000800,"latency":730)",
                                     R"("{\"status\":\"error\",\"error\":\"timeout\"}")"));
  // A custom type is the task "event", its name in `custom`.
  expect_body(r.bodies[3], tree_body("c1", R"("g1")", "event",
                                     R"("input":"42","output":"true",)"
                                     R"("feedback_tag":null,"feedback_text":null,)"
                                     R"("start_timestamp":1700000000100,)"
                                     R"("end_timestamp":1700000000100,"latency":0)",
                                     R"("{\"type\":\"lookup_cache\"}")"));
  // Still open: no end, no latency.
  expect_body(r.bodies[4], tree_body("s1", "null", "system",
                                     R"("input":"Initializing cache","output":null,)"
                                     R"("feedback_tag":null,"feedback_text":null,)"
                                     R"("start_timestamp":1700000000000,)"
                                     R"("end_timestamp":null,"latency":null)",
                                     "null"));
  // An orphan keeps the parent it named; an end before the start is 0 ms.
  expect_body(r.bodies[5], tree_body("o1", R"("gone")", "tool",
                                     R"("input":null,"output":null,)"
                                     R"("feedback_tag":null,"feedback_text":null,)"
                                     R"("start_timestamp":1700000000900,)"
                                     R"("end_timestamp":1700000000899,"latency":0)",
                                     "null"));
  // Feedback: the trace's (parent null) and an event's (parent = target).
  expect_body(r.bodies[6], tree_body(fb1, "null", "feedback",
                                     R"("input":null,"output":null,"feedback_tag":"THUMBS_UP",)"
                                     R"("feedback_text":"User marked response as helpful",)"
                                     R"("start_timestamp":1700000060000,)"
                                     R"("end_timestamp":1700000060000,"latency":null)",
                                     R"("{\"score\":1}")"));
  expect_body(r.bodies[7], tree_body(fb2, R"("g1")", "feedback",
                                     R"("input":null,"output":null,"feedback_tag":"WRONG_SOURCE",)"
                                     R"("feedback_text":null,"start_timestamp":1700000061000,)"
                                     R"("end_timestamp":1700000061000,"latency":null)",
                                     R"("{\"score\":0}")"));
  EXPECT_EQ(detail::neuraltrust_feedback_id("4bf92f3577b34da6a3ce929d0e0e4736",
                                            ojson::parse(kTreeDoc)["feedback"][1].dump()),
            fb2);
}

// What the trace does not say: the interaction the app named is kept; a
// trace without a conversation is a conversation of its own (as the SDK,
// which makes one up); no user or metadata is null; types are matched in
// any case; CUSTOM and a missing type are plain events.
TEST(NeuralTrustMappingTest, DefaultsAndTypes) {
  const char* doc = R"({"trace_id":"t-bare","revision":1,"conversation_id":null,
   "session_id":null,"interaction_id":"turn-7","channel_id":null,"user":{},"metadata":{},
   "events":[
    {"id":"k1","parent_id":null,"type":"tool","input":"x","output":"y","start_ts":5000000,
     "end_ts":7999999,"status":"ok","error":null,"children":[]},
    {"id":"u1","parent_id":null,"type":"CUSTOM","input":null,"output":null,"start_ts":1,
     "end_ts":2,"status":"error","error":null,"children":[]},
    {"id":"x1","parent_id":null,"type":null,"input":null,"output":"late","start_ts":null,
     "end_ts":18446744073709551615,"status":"ok","error":null,"children":[]},
    {"id":"rt","parent_id":null,"type":"Router","input":"q","output":"faq","start_ts":0,
     "end_ts":0,"status":"ok","error":null,"children":[]}],
   "feedback":[{"tag":null,"text":"meh","score":null,"target_id":null,"ts":3000000}]})";
  detail::NeuralTrustRequests r = map(doc);
  ASSERT_EQ(r.bodies.size(), 5u);
  auto head = [](const std::string& id, const std::string& task) {
    return R"({"trace_id":")" + id +
           R"(","interaction_id":"turn-7","conversation_id":"t-bare","session_id":null,)"
           R"("channel_id":null,"parent_id":null,"type":"traces","task":")" +
           task + "\",";
  };
  const std::string tail = R"(,"user":null,"metadata":null,"custom":)";
  expect_body(r.bodies[0], head("k1", "tool") +
                               R"("input":"x","output":"y","feedback_tag":null,)"
                               R"("feedback_text":null,"start_timestamp":5,"end_timestamp":7,)"
                               R"("latency":2)" +
                               tail + "null}");
  expect_body(r.bodies[1], head("u1", "event") +
                               R"("input":null,"output":null,"feedback_tag":null,)"
                               R"("feedback_text":null,"start_timestamp":0,"end_timestamp":0,)"
                               R"("latency":0)" +
                               tail + R"("{\"status\":\"error\",\"error\":null}"})");
  // Only an end arrived: no type, no start; a time past 2^63 stays exact.
  expect_body(r.bodies[2], head("x1", "event") +
                               R"("input":null,"output":"late","feedback_tag":null,)"
                               R"("feedback_text":null,"start_timestamp":null,)"
                               R"("end_timestamp":18446744073709,"latency":null)" +
                               tail + "null}");
  expect_body(r.bodies[3], head("rt", "router") +
                               R"("input":"q","output":"faq","feedback_tag":null,)"
                               R"("feedback_text":null,"start_timestamp":0,"end_timestamp":0,)"
                               R"("latency":0)" +
                               tail + "null}");
  expect_body(r.bodies[4], head(r.ids[4], "feedback") +
                               R"("input":null,"output":null,"feedback_tag":null,)"
                               R"("feedback_text":"meh","start_timestamp":3,"end_timestamp":3,)"
                               R"("latency":null)" +
                               tail + "null}");
}

// kTreeDoc as a later revision that marks what changed since the one before.
std::string with_changes(uint32_t revision) {
  ojson d = ojson::parse(kTreeDoc);
  d["revision"] = revision;
  d["trace_changed"] = false;
  auto& m1 = d["events"][0];
  m1["changed"] = false;
  m1["children"][0]["changed"] = true;                  // r1: new
  m1["children"][1]["changed"] = false;                 // g1
  m1["children"][1]["children"][0]["changed"] = false;  // c1
  d["events"][1]["changed"] = true;                     // s1: its end arrived
  d["events"][2]["changed"] = false;                    // o1
  d["feedback"][0]["changed"] = false;
  d["feedback"][1]["changed"] = true;
  return d.dump();
}

TEST(NeuralTrustMappingTest, ALaterRevisionSendsOnlyWhatChanged) {
  detail::NeuralTrustRequests all = map(kTreeDoc);
  detail::NeuralTrustRequests later = map(with_changes(2));
  // A changed child of an unchanged parent goes; the feedback item keeps its id.
  ASSERT_EQ(later.ids, (std::vector<std::string>{"r1", "s1", all.ids[7]}));
  EXPECT_EQ(later.events, 2u);
  EXPECT_EQ(later.bodies[0], all.bodies[1]);
  EXPECT_EQ(later.bodies[1], all.bodies[4]);
  EXPECT_EQ(later.bodies[2], all.bodies[7]);
  // Revision 1 sends everything; so does a later one without the key.
  EXPECT_EQ(map(with_changes(1)).bodies, all.bodies);
  ojson no_key = ojson::parse(kTreeDoc);
  no_key["revision"] = 3;
  EXPECT_EQ(map(no_key.dump()).bodies, all.bodies);
  // Nothing changed: nothing to send.
  ojson none = ojson::parse(with_changes(4));
  none["events"][0]["children"][0]["changed"] = false;
  none["events"][1]["changed"] = false;
  none["feedback"][1]["changed"] = false;
  detail::NeuralTrustRequests empty = map(none.dump());
  EXPECT_TRUE(empty.bodies.empty());
  EXPECT_EQ(empty.events, 0u);
}

TEST(NeuralTrustMappingTest, ADocumentThatIsNotOneIsRefused) {
  detail::NeuralTrustRequests r;
  std::string error;
  EXPECT_FALSE(detail::neuraltrust_requests("{\"trace_id\":", &r, &error));
  EXPECT_FALSE(error.empty());
  EXPECT_FALSE(detail::neuraltrust_requests("[1]", &r, &error));
  EXPECT_FALSE(detail::neuraltrust_requests(R"({"events":[]})", &r, &error));
}

TEST(NeuralTrustMappingTest, TruncationReplacesTheLargerOfInputAndOutput) {
  ojson b = ojson::parse(map(kTreeDoc).bodies[0]);
  b["input"] = std::string(5000, 'i');
  b["output"] = std::string(6000, 'o');
  std::string body = b.dump();
  ASSERT_TRUE(detail::truncate_neuraltrust_body(&body));
  ojson t = ojson::parse(body);
  EXPECT_EQ(t["output"], "[truncated 6002 bytes]");
  EXPECT_EQ(t["input"], std::string(5000, 'i'));
  ASSERT_TRUE(detail::truncate_neuraltrust_body(&body));
  EXPECT_EQ(ojson::parse(body)["input"], "[truncated 5002 bytes]");
  EXPECT_FALSE(detail::truncate_neuraltrust_body(&body));  // nothing left worth it
  std::string not_json = "{";
  EXPECT_FALSE(detail::truncate_neuraltrust_body(&not_json));
}

// ---- delivery ---------------------------------------------------------------

class NeuralTrustDeliveryTest : public ::testing::Test {
 protected:
  void SetUp() override { store_ = testing::open_store(dir_.str()); }

  Options options(const std::string& endpoint) {
    Options o;
    o.endpoint = endpoint;
    o.format = Format::kNeuralTrust;
    o.flush_interval_ms = 0;
    o.retry_initial_ms = 1;
    o.retry_max_ms = 5;
    o.retry_after_max_ms = 100;
    o.connect_timeout_ms = 2000;
    o.request_timeout_ms = 2000;
    o.auth_probe_interval_ms = 60000;
    return o;
  }

  bool drained() { return store_->outbox_entries() == 0; }

  // "<interaction_id>/<trace_id>" of a request (trace/event), "?" when the
  // body is not JSON.
  static std::string id_of(const RecordedRequest& r) {
    ojson j = ojson::parse(r.decoded, nullptr, false);
    if (j.is_discarded()) return "?";
    return j["interaction_id"].get<std::string>() + "/" + j["trace_id"].get<std::string>();
  }
  static std::vector<std::string> ids_of(const std::vector<RecordedRequest>& reqs) {
    std::vector<std::string> ids;
    for (auto& r : reqs)
      ids.push_back(id_of(r));
    return ids;
  }

  buffer::testing::TempDir dir_;
  std::unique_ptr<buffer::Store> store_;
};

TEST_F(NeuralTrustDeliveryTest, OneRequestPerEventAndFeedbackItemWithTheSdksHeaders) {
  HttpServer server;
  ojson doc = ojson::parse(make_doc("t1", 1, 2));
  doc["feedback"] = ojson::parse(R"([{"tag":"THUMBS_UP","text":"ok","score":1,
                                      "target_id":"e1","ts":1700000002000000000}])");
  emit_doc(*store_, "t1", doc.dump());
  Options o = options(server.url() + "/base/");
  o.compression = Compression::kGzip;  // not for this format
  o.headers = {{"X-Tenant", "acme"}};
  ::setenv("SIDETRACE_NT_TEST_KEY", "nt-key\n", 1);
  o.api_key_env = "SIDETRACE_NT_TEST_KEY";
  Delivery d(*store_, *store_, o);
  d.start();
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  d.stop();
  detail::NeuralTrustRequests want = map(doc.dump());
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 3u);
  uint64_t bytes = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    const auto& r = reqs[i];
    EXPECT_EQ(r.method, "POST");
    EXPECT_EQ(r.target, "/base/v1/trace");
    EXPECT_EQ(r.header("token"), "nt-key");
    EXPECT_EQ(r.header("authorization"), "");
    EXPECT_EQ(r.header("content-type"), "application/json");
    EXPECT_EQ(r.header("content-encoding"), "");
    EXPECT_EQ(r.header("idempotency-key"), "");
    EXPECT_EQ(r.header("x-tenant"), "acme");
    EXPECT_EQ(r.body, want.bodies[i]);
    bytes += r.body.size();
  }
  EXPECT_EQ(ids_of(reqs), (std::vector<std::string>{"t1/e0", "t1/e1", "t1/" + want.ids[2]}));
  Stats s = d.stats();
  EXPECT_EQ(s.requests_sent, 3u);
  EXPECT_EQ(s.batches_sent, 1u);
  EXPECT_EQ(s.traces_delivered, 1u);
  EXPECT_EQ(s.events_delivered, 2u);
  EXPECT_EQ(s.bytes_sent, bytes);
  EXPECT_EQ(s.latency_count, 1u);
}

TEST_F(NeuralTrustDeliveryTest, AnApiKeyHeaderOverridesToken) {
  HttpServer server;
  emit_doc(*store_, "t1", make_doc("t1", 1, 1));
  Options o = options(server.url());
  std::string key_file = dir_.str() + "/key";
  { std::ofstream(key_file) << "k-9\n"; }
  o.api_key_file = key_file;
  o.api_key_header = "X-Api-Key";
  Delivery d(*store_, *store_, o);
  d.start();
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  auto r = server.requests().at(0);
  EXPECT_EQ(r.header("x-api-key"), "k-9");
  EXPECT_EQ(r.header("token"), "");
  EXPECT_EQ(r.target, "/v1/trace");
}

// A 503 on the second request: the retry sends that one again, not the
// first, which the upstream already has.
TEST_F(NeuralTrustDeliveryTest, ARetryResumesAtTheRequestThatFailed) {
  HttpServer server;
  std::atomic<int> n{0};
  server.set_handler([&](const RecordedRequest&) {
    Reply r;
    if (++n == 2) r.status = 503;
    return r;
  });
  emit_doc(*store_, "t1", make_doc("t1", 1, 3));
  Delivery d(*store_, *store_, options(server.url()));
  d.start();
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  EXPECT_EQ(ids_of(server.requests()),
            (std::vector<std::string>{"t1/e0", "t1/e1", "t1/e1", "t1/e2"}));
  Stats s = d.stats();
  EXPECT_EQ(s.failed_retryable, 1u);
  EXPECT_EQ(s.batches_retried, 1u);
  EXPECT_EQ(s.requests_sent, 3u);
  EXPECT_EQ(s.events_delivered, 3u);
}

// The upstream refuses one event: its whole document is dead-lettered, the
// requests after it are not sent, and the other traces go on.
TEST_F(NeuralTrustDeliveryTest, ARefusedRequestDeadLettersItsDocumentOnly) {
  HttpServer server;
  server.set_handler([&](const RecordedRequest& req) {
    Reply r;
    if (id_of(req) == "bad/e1") r.status = 400;
    return r;
  });
  for (const char* id : {"good1", "bad", "good2"})
    emit_doc(*store_, id, make_doc(id, 1, 3));
  Delivery d(*store_, *store_, options(server.url()));
  d.start();
  ASSERT_TRUE(wait_until([&] {
    Stats s = d.stats();
    return drained() && s.deadlettered == 1 && s.traces_delivered == 2 && s.in_flight == 0;
  }));
  std::vector<DeadLetter> dl;
  ASSERT_TRUE(deadletter_list(*store_, &dl).ok());
  ASSERT_EQ(dl.size(), 1u);
  EXPECT_EQ(dl[0].trace_ids, std::vector<std::string>{"bad"});
  EXPECT_EQ(dl[0].http_status, 400);
  EXPECT_NE(dl[0].reason.find("request 2 of 3 (id e1)"), std::string::npos) << dl[0].reason;
  std::map<std::string, int> seen;
  for (auto& id : ids_of(server.requests()))
    ++seen[id];
  EXPECT_EQ(seen["bad/e0"], 1);
  EXPECT_EQ(seen["bad/e1"], 1);
  EXPECT_EQ(seen.count("bad/e2"), 0u);
  for (const char* g : {"good1", "good2"}) {
    for (const char* e : {"/e0", "/e1", "/e2"}) {
      EXPECT_EQ(seen[std::string(g) + e], 1) << g << e;
    }
  }
  EXPECT_EQ(d.stats().failed_permanent, 1u);
}

TEST_F(NeuralTrustDeliveryTest, TooLargeTruncatesTheRequest) {
  HttpServer server;
  server.set_handler([&](const RecordedRequest& req) {
    Reply r;
    if (req.body.size() > 4000) r.status = 413;
    return r;
  });
  emit_doc(*store_, "t1", make_doc("t1", 1, 1, std::string(10000, 'p')));
  Delivery d(*store_, *store_, options(server.url()));
  d.start();
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(ojson::parse(reqs[1].body)["input"], "[truncated 10002 bytes]");
  EXPECT_EQ(d.stats().documents_truncated, 1u);
  EXPECT_EQ(d.stats().failed_too_large, 1u);
}

// 401 on the second request: sending pauses (a new trace waits on disk); a
// reset probes again with that same request.
TEST_F(NeuralTrustDeliveryTest, AuthFailurePausesAndResumesAtTheSameRequest) {
  HttpServer server;
  std::atomic<bool> auth_ok{false};
  server.set_handler([&](const RecordedRequest& req) {
    Reply r;
    if (!auth_ok && id_of(req) == "t1/e1") r.status = 401;
    return r;
  });
  emit_doc(*store_, "t1", make_doc("t1", 1, 2));
  Options o = options(server.url());
  o.max_in_flight = 2;
  Delivery d(*store_, *store_, o);
  d.start();
  ASSERT_TRUE(wait_until([&] { return d.stats().auth_failed; }));
  emit_doc(*store_, "t2", make_doc("t2", 1, 1));
  EXPECT_EQ(server.request_count(), 2u);
  auth_ok = true;
  d.reset_auth();
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  EXPECT_EQ(ids_of(server.requests()),
            (std::vector<std::string>{"t1/e0", "t1/e1", "t1/e1", "t2/e0"}));
  EXPECT_FALSE(d.stats().auth_failed);
  EXPECT_EQ(d.stats().failed_auth, 1u);
}

// Each document is a batch of its own: with the upstream answering after
// 100 ms, three traces are sent side by side (max_in_flight), never more,
// and the requests of one trace one after another, in order.
TEST_F(NeuralTrustDeliveryTest, TracesGoSideBySideUpToMaxInFlightEachInOrder) {
  HttpServer server;
  constexpr auto kDelay = std::chrono::milliseconds(100);
  server.set_handler([&](const RecordedRequest&) {
    Reply r;
    r.delay_ms = kDelay.count();
    return r;
  });
  for (int t = 0; t < 6; ++t)
    emit_doc(*store_, "t" + std::to_string(t), make_doc("t" + std::to_string(t), 1, 3));
  Options o = options(server.url());
  o.max_in_flight = 3;
  Delivery d(*store_, *store_, o);
  d.start();
  ASSERT_TRUE(wait_until([&] { return drained(); }, std::chrono::seconds(30)));
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 18u);
  std::map<std::string, std::vector<const RecordedRequest*>> by_trace;
  for (auto& r : reqs) {
    std::string id = id_of(r);
    by_trace[id.substr(0, id.find('/'))].push_back(&r);
  }
  ASSERT_EQ(by_trace.size(), 6u);
  for (auto& [trace, rs] : by_trace) {
    ASSERT_EQ(rs.size(), 3u);
    for (size_t i = 0; i < rs.size(); ++i) {
      EXPECT_EQ(id_of(*rs[i]), trace + "/e" + std::to_string(i));
      // The next request of a trace leaves only after the answer to the one before.
      if (i > 0) {
        EXPECT_GE(rs[i]->at - rs[i - 1]->at, kDelay);
      }
    }
  }
  size_t most = 0;
  for (auto& a : reqs) {
    size_t open = 0;
    for (auto& b : reqs)
      open += b.at >= a.at && b.at - a.at < kDelay;
    most = std::max(most, open);
  }
  EXPECT_LE(most, 3u);
  EXPECT_GE(most, 2u);
  EXPECT_EQ(d.stats().batches_sent, 6u);
}

// Batches of several documents (replayed dead letters of another format)
// are split into one batch per document, sent in their order.
TEST_F(NeuralTrustDeliveryTest, ABatchOfSeveralDocumentsIsSplitIntoOnePerDocument) {
  detail::DeadLetterRecord rec;
  rec.reason = "test";
  rec.key = detail::new_idempotency_key();
  rec.trace_ids = {"a", "b", "c"};
  for (auto& id : rec.trace_ids)
    rec.docs.push_back(make_doc(id, 1, 2));
  uint64_t evicted = 0, evicted_docs = 0;
  ASSERT_TRUE(detail::deadletter_add(*store_, rec, 1u << 30, 100, &evicted, &evicted_docs).ok());
  size_t replayed = 0;
  ASSERT_TRUE(deadletter_replay(*store_, &replayed).ok());
  ASSERT_EQ(replayed, 1u);
  HttpServer server;
  Options o = options(server.url());
  o.max_in_flight = 1;
  Delivery d(*store_, *store_, o);
  d.start();
  // Counted before the batch record is deleted: wait for both.
  ASSERT_TRUE(wait_until([&] {
    std::vector<std::pair<std::string, std::string>> rows;
    return d.stats().traces_delivered == 3 &&
           store_->meta_scan(detail::kBatchPrefix, 100, &rows).ok() && rows.empty();
  }));
  EXPECT_EQ(ids_of(server.requests()),
            (std::vector<std::string>{"a/e0", "a/e1", "b/e0", "b/e1", "c/e0", "c/e1"}));
  EXPECT_EQ(d.stats().batches_split, 1u);
}

// Revision 2 of a trace carries what changed: only that is sent, after
// revision 1.
TEST_F(NeuralTrustDeliveryTest, ALaterRevisionSendsOnlyItsChanges) {
  HttpServer server;
  ojson rev1 = ojson::parse(make_doc("t1", 1, 2));
  ojson rev2 = rev1;
  rev2["revision"] = 2;
  rev2["events"][0]["changed"] = false;
  rev2["events"][1]["changed"] = false;
  rev2["feedback"] = ojson::parse(R"([{"tag":"late","text":null,"score":null,
                                       "target_id":"e0","ts":1700000090000000000,
                                       "changed":true}])");
  emit_doc(*store_, "t1", rev1.dump());
  emit_doc(*store_, "t1", rev2.dump());
  Delivery d(*store_, *store_, options(server.url()));
  d.start();
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 3u);
  EXPECT_EQ(id_of(reqs[0]), "t1/e0");
  EXPECT_EQ(id_of(reqs[1]), "t1/e1");
  ojson fb = ojson::parse(reqs[2].body);
  EXPECT_EQ(fb["task"], "feedback");
  EXPECT_EQ(fb["feedback_tag"], "late");
  EXPECT_EQ(fb["parent_id"], "e0");
  EXPECT_EQ(d.stats().traces_delivered, 2u);
  EXPECT_EQ(d.stats().events_delivered, 2u);
}

// The NeuralTrust API has no idempotency key: a document interrupted by a
// stop (or a crash) is sent again from its first request at the next start,
// so the events the upstream had already accepted arrive twice.
TEST_F(NeuralTrustDeliveryTest, AfterARestartADocumentIsSentAgainFromItsFirstRequest) {
  HttpServer server;
  std::atomic<bool> fail{true};
  server.set_handler([&](const RecordedRequest& req) {
    Reply r;
    if (fail && id_of(req) == "t1/e1") r.status = 503;
    return r;
  });
  emit_doc(*store_, "t1", make_doc("t1", 1, 2));
  Options o = options(server.url());
  o.retry_initial_ms = 20;
  o.retry_max_ms = 20;
  {
    Delivery d(*store_, *store_, o);
    d.start();
    ASSERT_TRUE(wait_until([&] { return server.request_count() >= 3; }));
  }
  fail = false;
  Delivery d(*store_, *store_, o);
  d.start();
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  std::map<std::string, int> seen;
  for (auto& id : ids_of(server.requests()))
    ++seen[id];
  EXPECT_EQ(seen["t1/e0"], 2);
}

// An exception while the requests are built is retried, then the document
// is dead-lettered with it as the reason; the in-flight slot is freed.
TEST_F(NeuralTrustDeliveryTest, AnEncoderThatThrowsDeadLettersTheDocument) {
  HttpServer server;
  emit_doc(*store_, "bad", make_doc("bad", 1, 1));
  emit_doc(*store_, "good", make_doc("good", 1, 1));
  Options o = options(server.url());
  o.max_in_flight = 1;
  o.encode_hook = [](const std::vector<std::string>& ids) {
    if (ids.at(0) == "bad") throw std::runtime_error("injected encoder fault");
  };
  Delivery d(*store_, *store_, o);
  d.start();
  ASSERT_TRUE(wait_until([&] {
    Stats s = d.stats();
    return drained() && s.deadlettered == 1 && s.traces_delivered == 1 && s.in_flight == 0;
  }));
  std::vector<DeadLetter> dl;
  ASSERT_TRUE(deadletter_list(*store_, &dl).ok());
  ASSERT_EQ(dl.size(), 1u);
  EXPECT_NE(dl[0].reason.find("injected encoder fault"), std::string::npos) << dl[0].reason;
  EXPECT_EQ(d.stats().internal_errors[static_cast<size_t>(Stage::kEncode)], kExceptionTries);
  EXPECT_EQ(ids_of(server.requests()), std::vector<std::string>{"good/e0"});
}

TEST(NeuralTrustFormatTest, ParsesItsName) {
  EXPECT_EQ(parse_format("neuraltrust"), Format::kNeuralTrust);
  EXPECT_THROW(parse_format("NeuralTrust"), std::invalid_argument);
}

}  // namespace
}  // namespace sidetrace::upstream

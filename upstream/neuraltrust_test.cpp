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

}  // namespace
}  // namespace sidetrace::upstream

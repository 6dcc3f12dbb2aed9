#include "ipc/otlp_map.h"

#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "otlp/proto/trace_service.pb.h"
#include "trace/reconstruct.h"

namespace sidetrace::ipc {
namespace {

namespace pbc = opentelemetry::proto::common::v1;
namespace pbt = opentelemetry::proto::trace::v1;
using nlohmann::json;

constexpr uint64_t kRecv = 1'700'000'100'000'000'000ull;
constexpr uint64_t kStart = 1'700'000'000'000'000'000ull;

std::string bytes_of(std::string_view hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  return out;
}

const std::string kTraceHex = "0af7651916cd43dd8448eb211c80319c";
const std::string kRootHex = "b7ad6b7169203331";
const std::string kLlmHex = "00f067aa0ba902b7";

void set(pbc::KeyValue* kv, std::string_view key, std::string_view v) {
  kv->set_key(std::string(key));
  kv->mutable_value()->set_string_value(std::string(v));
}
void set(pbc::KeyValue* kv, std::string_view key, int64_t v) {
  kv->set_key(std::string(key));
  kv->mutable_value()->set_int_value(v);
}
template <typename Owner, typename V>
void attr(Owner* o, std::string_view key, V v) {
  set(o->add_attributes(), key, v);
}

pbt::Span* add_span(pbt::ScopeSpans* ss, std::string_view trace_hex, std::string_view span_hex,
                    std::string_view parent_hex, std::string_view name, uint64_t start,
                    uint64_t end) {
  pbt::Span* s = ss->add_spans();
  s->set_trace_id(bytes_of(trace_hex));
  s->set_span_id(bytes_of(span_hex));
  if (!parent_hex.empty()) s->set_parent_span_id(bytes_of(parent_hex));
  s->set_name(std::string(name));
  s->set_start_time_unix_nano(start);
  s->set_end_time_unix_nano(end);
  return s;
}

// An agent span with a chat span under it, as the GenAI conventions and
// OpenInference describe them, from one service.
OtlpRequest chat_request() {
  OtlpRequest req;
  auto* rs = req.add_resource_spans();
  attr(rs->mutable_resource(), "service.name", "support-bot");
  attr(rs->mutable_resource(), "deployment.environment", "prod");
  auto* ss = rs->add_scope_spans();
  ss->mutable_scope()->set_name("my-instrumentation");
  ss->mutable_scope()->set_version("1.2.3");
  pbt::Span* root = add_span(ss, kTraceHex, kRootHex, "", "answer", kStart, kStart + 812'000'000);
  attr(root, "openinference.span.kind", "AGENT");
  attr(root, "input.value", "What is 2+2?");
  attr(root, "input.mime_type", "text/plain");
  attr(root, "output.value", "4");
  attr(root, "session.id", "session-9");
  attr(root, "user.id", "u-42");
  attr(root, "http.route", "/ask");
  root->mutable_status()->set_code(pbt::Status::STATUS_CODE_OK);
  pbt::Span* llm = add_span(ss, kTraceHex, kLlmHex, kRootHex, "chat gpt-4o-mini",
                            kStart + 10'000'000, kStart + 800'500'000);
  attr(llm, "gen_ai.operation.name", "chat");
  attr(llm, "gen_ai.request.model", "gpt-4o-mini");
  attr(llm, "gen_ai.usage.input_tokens", int64_t{12});
  attr(llm, "gen_ai.usage.output_tokens", int64_t{1});
  attr(llm, "gen_ai.conversation.id", "conv-17");
  attr(llm, "gen_ai.prompt.0.role", "system");
  attr(llm, "gen_ai.prompt.0.content", "Be brief.");
  attr(llm, "gen_ai.prompt.1.role", "user");
  attr(llm, "gen_ai.prompt.1.content", "What is 2+2?");
  attr(llm, "gen_ai.completion.0.role", "assistant");
  attr(llm, "gen_ai.completion.0.content", "4");
  return req;
}

OtlpMapped map(const OtlpRequest& req, DecodeLimits limits = {}) {
  OtlpMapped out;
  map_otlp_request(req, limits, kRecv, &out);
  return out;
}

// The trace document that the mapped messages of `trace_hex` reconstruct to.
json document(const OtlpMapped& mapped, const std::string& trace_hex = kTraceHex) {
  std::vector<trace::StoredMessage> stored;
  uint64_t seq = 0;
  for (const Message& m : mapped.messages) {
    if (m.trace_id == trace_hex) stored.push_back({++seq, m.recv_ns, m.raw});
  }
  return json::parse(trace::build_trace(trace_hex, stored, {}).document);
}

TEST(OtlpMapTest, EachSpanBecomesOneEventAndTheContextATraceMessage) {
  const OtlpMapped mapped = map(chat_request());
  EXPECT_EQ(mapped.spans, 2u);
  EXPECT_EQ(mapped.rejected_spans, 0u);
  EXPECT_TRUE(mapped.error.empty()) << mapped.error;
  ASSERT_EQ(mapped.messages.size(), 3u);  // two events, one trace context
  size_t weight = 0;
  for (const Message& m : mapped.messages) {
    EXPECT_EQ(m.trace_id, kTraceHex);
    EXPECT_EQ(m.recv_ns, kRecv);
    weight += m.weight();
  }
  EXPECT_EQ(mapped.weight, weight);
  EXPECT_EQ(mapped.messages[0].kind, Kind::kEvent);
  EXPECT_EQ(mapped.messages[0].id, kRootHex);
  EXPECT_EQ(mapped.messages[1].kind, Kind::kEvent);
  EXPECT_EQ(mapped.messages[1].id, kLlmHex);
  EXPECT_EQ(mapped.messages[2].kind, Kind::kTrace);

  const json doc = document(mapped);
  EXPECT_EQ(doc["conversation_id"], "conv-17");
  EXPECT_EQ(doc["session_id"], "session-9");
  EXPECT_EQ(doc["user"], json({{"id", "u-42"}}));
  EXPECT_EQ(doc["metadata"],
            json({{"service.name", "support-bot"}, {"deployment.environment", "prod"}}));
  EXPECT_EQ(doc["status"], "ok");
  ASSERT_EQ(doc["events"].size(), 1u);
  const json& root = doc["events"][0];
  EXPECT_EQ(root["id"], kRootHex);
  EXPECT_EQ(root["parent_id"], nullptr);
  EXPECT_EQ(root["type"], "AGENT");
  EXPECT_EQ(root["name"], "answer");
  EXPECT_EQ(root["input"], "What is 2+2?");
  EXPECT_EQ(root["output"], "4");
  EXPECT_EQ(root["start_ts"], kStart);
  EXPECT_EQ(root["end_ts"], kStart + 812'000'000);
  EXPECT_EQ(root["status"], "ok");
  // Consumed: input/output values, their text mime type, the trace context.
  EXPECT_EQ(root["attrs"], json({{"otel.scope.name", "my-instrumentation"},
                                 {"otel.scope.version", "1.2.3"},
                                 {"openinference.span.kind", "AGENT"},
                                 {"http.route", "/ask"}}));
  ASSERT_EQ(root["children"].size(), 1u);
  const json& llm = root["children"][0];
  EXPECT_EQ(llm["id"], kLlmHex);
  EXPECT_EQ(llm["parent_id"], kRootHex);
  EXPECT_EQ(llm["type"], "GENERATION");
  EXPECT_EQ(llm["name"], "chat gpt-4o-mini");
  EXPECT_EQ(llm["input"], json::parse(R"([{"role":"system","content":"Be brief."},
                                          {"role":"user","content":"What is 2+2?"}])"));
  EXPECT_EQ(llm["output"], json::parse(R"([{"role":"assistant","content":"4"}])"));
  EXPECT_EQ(llm["duration_ms"], 790.5);
  EXPECT_EQ(llm["status"], "ok");  // unset
  EXPECT_EQ(llm["attrs"], json({{"model", "gpt-4o-mini"},
                                {"input_tokens", 12},
                                {"output_tokens", 1},
                                {"otel.scope.name", "my-instrumentation"},
                                {"otel.scope.version", "1.2.3"},
                                {"gen_ai.operation.name", "chat"}}));
}

TEST(OtlpMapTest, EventTypeFromGenAiOperationThenOpenInferenceKind) {
  EXPECT_EQ(otlp_event_type("chat", ""), "GENERATION");
  EXPECT_EQ(otlp_event_type("text_completion", ""), "GENERATION");
  EXPECT_EQ(otlp_event_type("generate_content", ""), "GENERATION");
  EXPECT_EQ(otlp_event_type("execute_tool", ""), "TOOL");
  EXPECT_EQ(otlp_event_type("invoke_agent", ""), "AGENT");
  EXPECT_EQ(otlp_event_type("create_agent", ""), "AGENT");
  EXPECT_EQ(otlp_event_type("retrieval", ""), "RETRIEVAL");
  EXPECT_EQ(otlp_event_type("embeddings", ""), "CUSTOM");
  EXPECT_EQ(otlp_event_type("chat", "TOOL"), "GENERATION") << "the GenAI operation comes first";
  EXPECT_EQ(otlp_event_type("", "LLM"), "GENERATION");
  EXPECT_EQ(otlp_event_type("", "TOOL"), "TOOL");
  EXPECT_EQ(otlp_event_type("", "AGENT"), "AGENT");
  EXPECT_EQ(otlp_event_type("", "RETRIEVER"), "RETRIEVAL");
  EXPECT_EQ(otlp_event_type("", "CHAIN"), "CUSTOM");
  EXPECT_EQ(otlp_event_type("", ""), "SYSTEM");
}

TEST(OtlpMapTest, ASpanWithoutGenAiAttributesIsASystemEventWithItsAttributesKept) {
  OtlpRequest req;
  auto* ss = req.add_resource_spans()->add_scope_spans();
  pbt::Span* s = add_span(ss, kTraceHex, kRootHex, "", "GET /health", kStart, kStart + 5);
  s->set_kind(pbt::Span::SPAN_KIND_SERVER);
  auto* kv = s->add_attributes();
  kv->set_key("flag");
  kv->mutable_value()->set_bool_value(true);
  kv = s->add_attributes();
  kv->set_key("ratio");
  kv->mutable_value()->set_double_value(0.25);
  kv = s->add_attributes();
  kv->set_key("tags");
  kv->mutable_value()->mutable_array_value()->add_values()->set_string_value("a");
  kv->mutable_value()->mutable_array_value()->add_values()->set_int_value(-3);
  kv = s->add_attributes();
  kv->set_key("nested");
  set(kv->mutable_value()->mutable_kvlist_value()->add_values(), "k", "v");
  kv = s->add_attributes();
  kv->set_key("raw");
  kv->mutable_value()->set_bytes_value(std::string("\x00\x01", 2));
  kv = s->add_attributes();
  kv->set_key("unset");
  const OtlpMapped mapped = map(req);
  ASSERT_EQ(mapped.messages.size(), 1u) << "no resource, no context: no trace message";
  const json doc = document(mapped);
  const json& e = doc["events"][0];
  EXPECT_EQ(e["type"], "SYSTEM");
  EXPECT_EQ(e["name"], "GET /health");
  EXPECT_EQ(e["input"], nullptr);
  EXPECT_EQ(e["attrs"], json::parse(R"({"flag":true,"ratio":0.25,"tags":["a",-3],
      "nested":{"k":"v"},"raw":{"$binary":"AAE="},"unset":null})"));
}

TEST(OtlpMapTest, AnOperationNeitherConventionKnowsIsCustomAndKeepsItsName) {
  OtlpRequest req;
  auto* ss = req.add_resource_spans()->add_scope_spans();
  pbt::Span* s = add_span(ss, kTraceHex, kRootHex, "", "embed docs", kStart, kStart + 5);
  attr(s, "gen_ai.operation.name", "embeddings");
  const json e = document(map(req))["events"][0];
  EXPECT_EQ(e["type"], "CUSTOM");
  EXPECT_EQ(e["name"], "embed docs");
  EXPECT_EQ(e["attrs"]["gen_ai.operation.name"], "embeddings");
}

TEST(OtlpMapTest, InputAndOutputComeFromTheGenAiEventsWhenTheAttributesHaveNone) {
  OtlpRequest req;
  auto* ss = req.add_resource_spans()->add_scope_spans();
  pbt::Span* s = add_span(ss, kTraceHex, kRootHex, "", "chat", kStart, kStart + 5);
  attr(s, "gen_ai.operation.name", "chat");
  auto* ev = s->add_events();
  ev->set_name("gen_ai.system.message");
  attr(ev, "content", "Be brief.");
  ev = s->add_events();
  ev->set_name("gen_ai.user.message");
  attr(ev, "content", "Hi");
  ev = s->add_events();
  ev->set_name("gen_ai.choice");
  attr(ev, "index", int64_t{0});
  attr(ev, "finish_reason", "stop");
  ev = s->add_events();
  ev->set_name("cache.lookup");
  ev->set_time_unix_nano(kStart + 1);
  attr(ev, "hit", "no");
  const json e = document(map(req))["events"][0];
  EXPECT_EQ(e["input"], json::parse(R"([{"role":"system","content":"Be brief."},
                                        {"role":"user","content":"Hi"}])"));
  EXPECT_EQ(e["output"], json::parse(R"([{"index":0,"finish_reason":"stop"}])"));
  // Events that were not used are kept.
  EXPECT_EQ(e["attrs"]["otel.events"],
            json::parse(R"([{"name":"cache.lookup","ts":1700000000000000001,
                             "attrs":{"hit":"no"}}])"));
}

TEST(OtlpMapTest, PromptAndCompletionEventsAndAttributesOfOlderConventions) {
  OtlpRequest req;
  auto* ss = req.add_resource_spans()->add_scope_spans();
  pbt::Span* a = add_span(ss, kTraceHex, kRootHex, "", "a", kStart, kStart + 5);
  auto* ev = a->add_events();
  ev->set_name("gen_ai.content.prompt");
  attr(ev, "gen_ai.prompt", "[{\"role\":\"user\",\"content\":\"Hi\"}]");
  ev = a->add_events();
  ev->set_name("gen_ai.content.completion");
  attr(ev, "gen_ai.completion", "Hello");
  pbt::Span* b = add_span(ss, kTraceHex, kLlmHex, kRootHex, "b", kStart, kStart + 5);
  attr(b, "gen_ai.prompt", "question");
  attr(b, "gen_ai.completion", "answer");
  const json root = document(map(req))["events"][0];
  EXPECT_EQ(root["input"], "[{\"role\":\"user\",\"content\":\"Hi\"}]");
  EXPECT_EQ(root["output"], "Hello");
  EXPECT_FALSE(root["attrs"].contains("otel.events"));
  const json& child = root["children"][0];
  EXPECT_EQ(child["input"], "question");
  EXPECT_EQ(child["output"], "answer");
  EXPECT_EQ(child["attrs"], json::object());
}

TEST(OtlpMapTest, InputValueWinsAndTheOtherPromptAttributesStay) {
  OtlpRequest req;
  auto* ss = req.add_resource_spans()->add_scope_spans();
  pbt::Span* s = add_span(ss, kTraceHex, kRootHex, "", "chat", kStart, kStart + 5);
  attr(s, "input.value", "{\"q\":1}");
  attr(s, "input.mime_type", "application/json");
  attr(s, "gen_ai.prompt.0.content", "q");
  const json e = document(map(req))["events"][0];
  EXPECT_EQ(e["input"], "{\"q\":1}");
  EXPECT_EQ(e["attrs"],
            json({{"input.mime_type", "application/json"}, {"gen_ai.prompt.0.content", "q"}}));
}

TEST(OtlpMapTest, ErrorStatusCarriesItsMessageOrTheException) {
  OtlpRequest req;
  auto* ss = req.add_resource_spans()->add_scope_spans();
  pbt::Span* a = add_span(ss, kTraceHex, kRootHex, "", "a", kStart, kStart + 5);
  a->mutable_status()->set_code(pbt::Status::STATUS_CODE_ERROR);
  a->mutable_status()->set_message("upstream timed out");
  pbt::Span* b = add_span(ss, kTraceHex, kLlmHex, kRootHex, "b", kStart, kStart + 5);
  b->mutable_status()->set_code(pbt::Status::STATUS_CODE_ERROR);
  auto* ev = b->add_events();
  ev->set_name("exception");
  attr(ev, "exception.type", "ValueError");
  attr(ev, "exception.message", "bad input");
  const json doc = document(map(req));
  EXPECT_EQ(doc["status"], "error");
  const json& root = doc["events"][0];
  EXPECT_EQ(root["status"], "error");
  EXPECT_EQ(root["error"], "upstream timed out");
  const json& child = root["children"][0];
  EXPECT_EQ(child["status"], "error");
  EXPECT_EQ(child["error"], "ValueError: bad input");
  ASSERT_EQ(child["attrs"]["otel.events"].size(), 1u) << "the exception itself is kept";
  EXPECT_EQ(child["attrs"]["otel.events"][0]["name"], "exception");
}

TEST(OtlpMapTest, InvalidSpansAreRejectedAloneWithTheirReasons) {
  OtlpRequest req;
  auto* ss = req.add_resource_spans()->add_scope_spans();
  add_span(ss, kTraceHex, kRootHex, "", "good", kStart, kStart + 5);
  add_span(ss, "0af76519", kLlmHex, "", "short trace id", kStart, kStart + 5);
  add_span(ss, "00000000000000000000000000000000", kLlmHex, "", "zero trace id", kStart,
           kStart + 5);
  add_span(ss, kTraceHex, "0000000000000000", "", "zero span id", kStart, kStart + 5);
  add_span(ss, kTraceHex, "00f067aa0ba902b8", "b7ad6b", "short parent", kStart, kStart + 5);
  pbt::Span* big = add_span(ss, kTraceHex, "00f067aa0ba902b9", "", "big", kStart, kStart + 5);
  attr(big, "input.value", std::string(2000, 'x'));
  // An all-zero parent is no parent.
  add_span(ss, kTraceHex, "00f067aa0ba902ba", "0000000000000000", "zero parent", kStart,
           kStart + 5);
  DecodeLimits limits;
  limits.max_message_bytes = 1024;
  const OtlpMapped mapped = map(req, limits);
  EXPECT_EQ(mapped.spans, 7u);
  EXPECT_EQ(mapped.rejected_spans, 5u);
  ASSERT_EQ(mapped.messages.size(), 2u);
  EXPECT_EQ(mapped.messages[0].id, kRootHex);
  EXPECT_EQ(mapped.messages[1].id, "00f067aa0ba902ba");
  EXPECT_NE(mapped.error.find("trace_id must be 16 bytes"), std::string::npos) << mapped.error;
  EXPECT_NE(mapped.error.find("(and 2 more)"), std::string::npos) << mapped.error;
  const json doc = document(mapped);
  ASSERT_EQ(doc["events"].size(), 2u);
  EXPECT_EQ(doc["events"][1]["parent_id"], nullptr);
}

TEST(OtlpMapTest, ATooLargeSpanIsNamedInTheReason) {
  OtlpRequest req;
  auto* ss = req.add_resource_spans()->add_scope_spans();
  pbt::Span* big = add_span(ss, kTraceHex, kRootHex, "", "big", kStart, kStart + 5);
  attr(big, "input.value", std::string(2000, 'x'));
  DecodeLimits limits;
  limits.max_message_bytes = 1024;
  const OtlpMapped mapped = map(req, limits);
  EXPECT_EQ(mapped.rejected_spans, 1u);
  EXPECT_TRUE(mapped.messages.empty());
  EXPECT_EQ(mapped.error.rfind("span " + kRootHex + ": too_large", 0), 0u) << mapped.error;
}

TEST(OtlpMapTest, MappingStopsPastTheWeightBound) {
  OtlpRequest req;
  auto* ss = req.add_resource_spans()->add_scope_spans();
  for (int i = 1; i <= 100; ++i) {
    std::string id = kRootHex;
    id[15] = "0123456789abcdef"[i % 16];
    id[14] = "0123456789abcdef"[i / 16];
    add_span(ss, kTraceHex, id, "", "s", kStart, kStart + 5);
  }
  OtlpMapped all;
  map_otlp_request(req, {}, kRecv, &all);
  EXPECT_FALSE(all.over_weight);
  EXPECT_EQ(all.messages.size(), 100u);
  OtlpMapped some;
  map_otlp_request(req, {}, kRecv, &some, all.weight / 4);
  EXPECT_TRUE(some.over_weight);
  EXPECT_LT(some.messages.size(), 30u);
  EXPECT_LE(some.weight, all.weight / 4 + all.weight / 100 * 2);
}

TEST(OtlpMapTest, TheContextOfEachResourceIsItsOwnTraceMessage) {
  OtlpRequest req;
  for (const char* service : {"frontend", "backend"}) {
    auto* rs = req.add_resource_spans();
    attr(rs->mutable_resource(), "service.name", service);
    auto* ss = rs->add_scope_spans();
    add_span(ss, kTraceHex, service[0] == 'f' ? kRootHex : kLlmHex,
             service[0] == 'f' ? "" : kRootHex, service, kStart, kStart + 5);
  }
  const OtlpMapped mapped = map(req);
  ASSERT_EQ(mapped.messages.size(), 4u);
  size_t traces = 0;
  for (const auto& m : mapped.messages)
    traces += m.kind == Kind::kTrace ? 1 : 0;
  EXPECT_EQ(traces, 2u);
  const json doc = document(mapped);
  EXPECT_EQ(doc["events"][0]["children"][0]["name"], "backend");
}

TEST(OtlpMapTest, RejectedSpansGiveNoContext) {
  OtlpRequest req;
  auto* rs = req.add_resource_spans();
  attr(rs->mutable_resource(), "service.name", "svc");
  add_span(rs->add_scope_spans(), kTraceHex, "0000000000000000", "", "bad", kStart, kStart + 5);
  const OtlpMapped mapped = map(req);
  EXPECT_EQ(mapped.rejected_spans, 1u);
  EXPECT_TRUE(mapped.messages.empty());
}

// The OTLP/HTTP JSON encoding of chat_request(): hex ids, lowerCamelCase,
// 64-bit integers as strings and as numbers, enums as integers, and a field
// this version does not know.
constexpr std::string_view kChatJson = R"({"resourceSpans":[{
  "resource":{"attributes":[{"key":"service.name","value":{"stringValue":"support-bot"}},
                            {"key":"deployment.environment","value":{"stringValue":"prod"}}]},
  "scopeSpans":[{"scope":{"name":"my-instrumentation","version":"1.2.3"},"spans":[
   {"traceId":"0AF7651916CD43DD8448EB211C80319C","spanId":"b7ad6b7169203331","parentSpanId":"",
    "name":"answer","kind":1,"startTimeUnixNano":"1700000000000000000",
    "endTimeUnixNano":1700000000812000000,"futureField":{"x":1},
    "attributes":[{"key":"openinference.span.kind","value":{"stringValue":"AGENT"}},
                  {"key":"input.value","value":{"stringValue":"What is 2+2?"}},
                  {"key":"input.mime_type","value":{"stringValue":"text/plain"}},
                  {"key":"output.value","value":{"stringValue":"4"}},
                  {"key":"session.id","value":{"stringValue":"session-9"}},
                  {"key":"user.id","value":{"stringValue":"u-42"}},
                  {"key":"http.route","value":{"stringValue":"/ask"}}],
    "status":{"code":1}},
   {"trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"00f067aa0ba902b7",
    "parent_span_id":"b7ad6b7169203331","name":"chat gpt-4o-mini",
    "startTimeUnixNano":"1700000000010000000","endTimeUnixNano":"1700000000800500000",
    "attributes":[{"key":"gen_ai.operation.name","value":{"stringValue":"chat"}},
                  {"key":"gen_ai.request.model","value":{"stringValue":"gpt-4o-mini"}},
                  {"key":"gen_ai.usage.input_tokens","value":{"intValue":"12"}},
                  {"key":"gen_ai.usage.output_tokens","value":{"intValue":1}},
                  {"key":"gen_ai.conversation.id","value":{"stringValue":"conv-17"}},
                  {"key":"gen_ai.prompt.0.role","value":{"stringValue":"system"}},
                  {"key":"gen_ai.prompt.0.content","value":{"stringValue":"Be brief."}},
                  {"key":"gen_ai.prompt.1.role","value":{"stringValue":"user"}},
                  {"key":"gen_ai.prompt.1.content","value":{"stringValue":"What is 2+2?"}},
                  {"key":"gen_ai.completion.0.role","value":{"stringValue":"assistant"}},
                  {"key":"gen_ai.completion.0.content","value":{"stringValue":"4"}}]}
  ]}]}]})";

TEST(OtlpMapTest, JsonDecodesToTheSameMessagesAsProtobuf) {
  OtlpRequest from_json;
  std::string error;
  ASSERT_TRUE(parse_otlp_json(kChatJson, &from_json, &error)) << error;
  const OtlpMapped a = map(from_json);
  const OtlpMapped b = map(chat_request());
  ASSERT_EQ(a.messages.size(), b.messages.size());
  for (size_t i = 0; i < a.messages.size(); ++i)
    EXPECT_EQ(a.messages[i].raw, b.messages[i].raw) << i;

  // And the protobuf encoding of the same request.
  OtlpRequest from_proto;
  ASSERT_TRUE(parse_otlp_protobuf(chat_request().SerializeAsString(), &from_proto, &error));
  const OtlpMapped c = map(from_proto);
  ASSERT_EQ(c.messages.size(), b.messages.size());
  for (size_t i = 0; i < c.messages.size(); ++i)
    EXPECT_EQ(c.messages[i].raw, b.messages[i].raw) << i;
}

TEST(OtlpMapTest, JsonIdsThatAreNotHexAreReadAsBase64OrRejectTheirSpan) {
  OtlpRequest req;
  std::string error;
  // base64 of 16 and 8 bytes, as some older exporters sent them.
  ASSERT_TRUE(parse_otlp_json(R"({"resourceSpans":[{"scopeSpans":[{"spans":[
      {"traceId":"CvdlGRbNQ92ESOshHIAxnA==","spanId":"t61rcWkgMzE=","name":"b64"},
      {"traceId":"0af7651916cd43dd8448eb211c80319c","spanId":"b7ad6b71","name":"short"}]}]}]})",
                              &req, &error))
      << error;
  const OtlpMapped mapped = map(req);
  EXPECT_EQ(mapped.rejected_spans, 1u);
  ASSERT_EQ(mapped.messages.size(), 1u);
  EXPECT_EQ(mapped.messages[0].trace_id, kTraceHex);
  EXPECT_EQ(mapped.messages[0].id, kRootHex);
}

TEST(OtlpMapTest, BodiesThatDoNotDecodeAreRefused) {
  OtlpRequest req;
  std::string error;
  EXPECT_FALSE(parse_otlp_json("{not json", &req, &error));
  EXPECT_FALSE(error.empty());
  EXPECT_FALSE(parse_otlp_json("[1,2]", &req, &error));
  EXPECT_FALSE(parse_otlp_json(R"({"resourceSpans":"many"})", &req, &error));
  EXPECT_FALSE(parse_otlp_json(R"({"resourceSpans":[{"scopeSpans":[{"spans":[
      {"traceId":"!!!","spanId":"b7ad6b7169203331"}]}]}]})",
                               &req, &error));
  EXPECT_FALSE(parse_otlp_protobuf("\xff\xff\xff\xff", &req, &error));
  EXPECT_TRUE(parse_otlp_protobuf("", &req, &error)) << "an empty request is a request";
  EXPECT_EQ(req.resource_spans_size(), 0);
}

TEST(OtlpMapTest, HexIsLowerCase) {
  EXPECT_EQ(to_hex(std::string("\x0a\xf7\xff\x00", 4)), "0af7ff00");
}

}  // namespace
}  // namespace sidetrace::ipc

#include "upstream/detail/encode.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>
#include <set>

namespace sidetrace::upstream::detail {
namespace {

using nlohmann::json;

const char* kDoc = R"({"trace_id":"trace-not-hex","revision":3,"conversation_id":"c1",
"session_id":"s1","interaction_id":null,"channel_id":null,"user":{"id":"u1","name":"n"},
"metadata":{"environment":"prod"},"start_ts":1000,"end_ts":9000,"duration_ms":0,"status":"ok",
"partial":false,"events":[{"id":"a1b2c3d4e5f60718","type":"AGENT","name":"agent","input":"hi",
"output":{"answer":42},"start_ts":1000,"end_ts":9000,"duration_ms":0,"status":"ok","error":null,
"attrs":{},"orphan":false,"unfinished":false,"children":[{"id":"gen-1","type":"GENERATION",
"name":null,"input":"q","output":"a","start_ts":2000,"end_ts":3000,"duration_ms":0,
"status":"error","error":"boom","attrs":{"model":"gpt-x","input_tokens":12,"output_tokens":34,
"temperature":0.5,"custom":"v"},"orphan":false,"unfinished":false,"children":[]}]},
{"id":"r1","type":"RETRIEVAL","name":"r","input":null,"output":null,"start_ts":4000,"end_ts":null,
"duration_ms":null,"status":"ok","error":null,"attrs":{},"orphan":true,"unfinished":true,
"children":[]}],"feedback":[{"tag":"thumbs","text":"good","score":1,"target_id":"gen-1","ts":5000},
{"tag":"overall","text":null,"score":0.5,"target_id":null,"ts":6000}]})";

const json* attr(const json& span, const std::string& key) {
  for (const json& a : span["attributes"]) {
    if (a["key"] == key) return &a["value"];
  }
  return nullptr;
}

TEST(UpstreamEncode, NativeBodyConcatenatesVerbatim) {
  std::vector<std::string_view> docs = {R"({"a":1})", R"({"b":2})"};
  std::string out;
  append_native_body(docs, &out);
  EXPECT_EQ(out, R"({"traces":[{"a":1},{"b":2}]})");
}

TEST(UpstreamEncode, CompressionRoundTrips) {
  std::string in;
  for (int i = 0; i < 1000; ++i)
    in += R"({"traces":[{"x":"yyyyyyyyyyyy"}]})";
  for (Compression c : {Compression::kGzip, Compression::kZstd, Compression::kNone}) {
    std::string z, back;
    ASSERT_TRUE(compress(c, 1, in, &z));
    if (c != Compression::kNone) {
      EXPECT_LT(z.size(), in.size() / 4);
    }
    ASSERT_TRUE(decompress(c, z, &back));
    EXPECT_EQ(back, in);
  }
  EXPECT_EQ(content_encoding(Compression::kGzip), "gzip");
  EXPECT_EQ(content_encoding(Compression::kNone), "");
  std::string back;
  EXPECT_FALSE(decompress(Compression::kGzip, "garbage", &back));
}

// One encoder builds body after body (levels and compressions changing
// between them, output buffers reused with content of their own): each body
// decodes to exactly the native body of its documents.
TEST(UpstreamEncode, BodyEncoderReusedAcrossBodies) {
  std::vector<std::string> big;
  for (int i = 0; i < 300; ++i)
    big.push_back(R"({"trace_id":"t)" + std::to_string(i) + R"(","x":")" +
                  std::string(static_cast<size_t>(i % 97) * 40, static_cast<char>('a' + i % 26)) +
                  R"("})");
  std::vector<std::string_view> many(big.begin(), big.end());
  std::vector<std::string_view> one = {R"({"a":1})"};
  std::vector<std::string_view> none;
  BodyEncoder enc;
  std::string out = "left over from an earlier body";
  for (int round = 0; round < 3; ++round) {
    for (Compression c : {Compression::kGzip, Compression::kZstd, Compression::kNone}) {
      for (int level : {1, 3}) {
        for (const auto* docs : {&many, &one, &none}) {
          std::string want;
          append_native_body(*docs, &want);
          ASSERT_TRUE(enc.native(c, level, *docs, &out));
          std::string back;
          ASSERT_TRUE(decompress(c, out, &back));
          EXPECT_EQ(back, want);
          if (c != Compression::kNone && docs == &many) {
            EXPECT_LT(out.size(), want.size() / 4);
          }
          ASSERT_TRUE(enc.compress(c, level, want, &out));
          ASSERT_TRUE(decompress(c, out, &back));
          EXPECT_EQ(back, want);
        }
      }
    }
  }
}

// gzip hands zlib its input and output space in chunks of at most
// kZlibMaxChunk bytes (zlib counts in 32 bits); with small chunks, bodies
// that span many of them, including chunk-sized pieces and pieces one byte
// either side, compress and decompress whole.
TEST(UpstreamEncode, GzipInChunksRoundTrips) {
  std::mt19937_64 rng(7);
  std::string noise(100'000, '\0');  // incompressible: output grows past chunks too
  for (char& ch : noise)
    ch = static_cast<char>(rng());
  std::string text;
  while (text.size() < 100'000)
    text += R"({"traces":[{"x":"yyyyyyyyyyyy"}]})";
  for (size_t chunk : {size_t{1}, size_t{7}, size_t{4096}, size_t{65537}}) {
    BodyEncoder enc(chunk);
    for (size_t len : {size_t{0}, size_t{1}, chunk - 1, chunk, chunk + 1, size_t{100'000}}) {
      for (const std::string* src : {&noise, &text}) {
        std::string in = src->substr(0, std::min(len, src->size()));
        std::string z, back;
        ASSERT_TRUE(enc.compress(Compression::kGzip, 1, in, &z)) << chunk << " " << len;
        ASSERT_TRUE(decompress(Compression::kGzip, z, &back, 1u << 30, chunk));
        EXPECT_EQ(back, in) << "chunk " << chunk << ", length " << len;
        ASSERT_TRUE(decompress(Compression::kGzip, z, &back));
        EXPECT_EQ(back, in) << "chunk " << chunk << ", length " << len;
      }
    }
    // The native body: one piece per document and separator.
    std::vector<std::string_view> docs = {std::string_view(noise).substr(0, 3 * chunk + 1),
                                          std::string_view(text).substr(0, 5000), "{}"};
    std::string want, z, back;
    append_native_body(docs, &want);
    ASSERT_TRUE(enc.native(Compression::kGzip, 6, docs, &z));
    ASSERT_TRUE(decompress(Compression::kGzip, z, &back, 1u << 30, chunk));
    EXPECT_EQ(back, want) << "chunk " << chunk;
  }
  // A stream cut short fails in chunks as it does whole.
  std::string z, back;
  ASSERT_TRUE(compress(Compression::kGzip, 1, text, &z));
  z.resize(z.size() / 2);
  EXPECT_FALSE(decompress(Compression::kGzip, z, &back, 1u << 30, 7));
  EXPECT_FALSE(decompress(Compression::kGzip, z, &back));
}

TEST(UpstreamEncode, OtlpIds) {
  EXPECT_EQ(otlp_id("A1B2C3D4E5F60718", 16), "a1b2c3d4e5f60718");
  std::string h = otlp_id("gen-1", 16);
  EXPECT_EQ(h.size(), 16u);
  EXPECT_EQ(h.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_EQ(h, otlp_id("gen-1", 16));  // deterministic
  EXPECT_NE(h, otlp_id("gen-2", 16));
  EXPECT_NE(otlp_id("0000000000000000", 16), "0000000000000000");  // all-zero is invalid
  EXPECT_EQ(otlp_id("x", 32).size(), 32u);
}

TEST(UpstreamEncode, OtlpMappingFieldByField) {
  std::vector<std::string_view> docs = {kDoc};
  std::string out, err;
  ASSERT_TRUE(append_otlp_body(docs, &out, &err)) << err;
  json body = json::parse(out);
  ASSERT_EQ(body["resourceSpans"].size(), 1u);
  const json& rs = body["resourceSpans"][0];
  const json* rev = attr(rs["resource"], "sidetrace.trace.revision");
  ASSERT_NE(rev, nullptr);
  EXPECT_EQ((*rev)["intValue"], "3");
  EXPECT_EQ((*attr(rs["resource"], "sidetrace.trace_id"))["stringValue"], "trace-not-hex");
  const json& spans = rs["scopeSpans"][0]["spans"];
  ASSERT_EQ(spans.size(), 3u);
  std::string trace_hex = otlp_id("trace-not-hex", 32);
  const json& agent = spans[0];
  const json& gen = spans[1];
  const json& ret = spans[2];
  for (const json& s : spans) {
    EXPECT_EQ(s["traceId"], trace_hex);
    EXPECT_EQ(s["spanId"].get<std::string>().size(), 16u);
    EXPECT_TRUE(s["startTimeUnixNano"].is_string());
    EXPECT_TRUE(s["endTimeUnixNano"].is_string());
    EXPECT_TRUE(s["kind"].is_number_integer());
    EXPECT_TRUE(s["status"]["code"].is_number_integer());
    EXPECT_EQ((*attr(s, "gen_ai.conversation.id"))["stringValue"], "c1");
    EXPECT_EQ((*attr(s, "session.id"))["stringValue"], "s1");
    EXPECT_EQ((*attr(s, "user.id"))["stringValue"], "u1");
    EXPECT_EQ((*attr(s, "metadata"))["stringValue"], R"({"environment":"prod"})");
    EXPECT_EQ((*attr(s, "sidetrace.trace.revision"))["intValue"], "3");
  }
  // Agent: hex id kept, root (no parent), output as JSON text.
  EXPECT_EQ(agent["spanId"], "a1b2c3d4e5f60718");
  EXPECT_FALSE(agent.contains("parentSpanId"));
  EXPECT_EQ(agent["startTimeUnixNano"], "1000");
  EXPECT_EQ(agent["endTimeUnixNano"], "9000");
  EXPECT_EQ(agent["status"]["code"], 1);
  EXPECT_EQ((*attr(agent, "openinference.span.kind"))["stringValue"], "AGENT");
  EXPECT_EQ((*attr(agent, "gen_ai.operation.name"))["stringValue"], "invoke_agent");
  EXPECT_EQ((*attr(agent, "input.value"))["stringValue"], "hi");
  EXPECT_EQ((*attr(agent, "output.value"))["stringValue"], R"({"answer":42})");
  EXPECT_EQ((*attr(agent, "output.mime_type"))["stringValue"], "application/json");
  // Generation: mapped id, parent, GenAI attributes, error status, targeted feedback.
  EXPECT_EQ(gen["spanId"], otlp_id("gen-1", 16));
  EXPECT_EQ(gen["parentSpanId"], "a1b2c3d4e5f60718");
  EXPECT_EQ(gen["name"], "GENERATION");
  EXPECT_EQ(gen["kind"], 3);
  EXPECT_EQ(gen["status"]["code"], 2);
  EXPECT_EQ(gen["status"]["message"], "boom");
  EXPECT_EQ((*attr(gen, "openinference.span.kind"))["stringValue"], "LLM");
  EXPECT_EQ((*attr(gen, "gen_ai.operation.name"))["stringValue"], "chat");
  EXPECT_EQ((*attr(gen, "gen_ai.request.model"))["stringValue"], "gpt-x");
  EXPECT_EQ((*attr(gen, "gen_ai.usage.input_tokens"))["intValue"], "12");
  EXPECT_EQ((*attr(gen, "gen_ai.usage.output_tokens"))["intValue"], "34");
  EXPECT_EQ((*attr(gen, "gen_ai.request.temperature"))["doubleValue"], 0.5);
  EXPECT_EQ((*attr(gen, "sidetrace.attr.custom"))["stringValue"], "v");
  ASSERT_EQ(gen["events"].size(), 1u);
  EXPECT_EQ(gen["events"][0]["name"], "feedback");
  EXPECT_EQ(gen["events"][0]["timeUnixNano"], "5000");
  EXPECT_EQ((*attr(gen, "annotation.thumbs.score"))["intValue"], "1");
  // Retrieval: orphan, unfinished -> UNSET, no end -> start.
  EXPECT_EQ((*attr(ret, "openinference.span.kind"))["stringValue"], "RETRIEVER");
  EXPECT_EQ(ret["status"]["code"], 0);
  EXPECT_EQ(ret["endTimeUnixNano"], "4000");
  EXPECT_EQ(attr(ret, "input.value"), nullptr);
  EXPECT_EQ((*attr(ret, "sidetrace.orphan"))["boolValue"], true);
  // Whole-trace feedback lands on the first root span.
  ASSERT_EQ(agent["events"].size(), 1u);
  EXPECT_EQ((*attr(agent, "annotation.overall.score"))["doubleValue"], 0.5);
}

// Attributes with OpenTelemetry names (as spans taken in over OTLP keep
// them) go out as they are, over the attributes derived from the event;
// arrays of scalars are OTLP arrays; an orphan keeps its parent's span id.
TEST(UpstreamEncode, OtlpKeepsOpenTelemetryAttributesAndAnOrphansParent) {
  const std::string doc = R"({"trace_id":"5b8efff798038103d269b633813fc60c","revision":1,
    "events":[{"id":"eee19b7ec3c1b174","parent_id":"aaaaaaaaaaaaaaaa","type":"GENERATION",
      "name":"chat","input":"{\"q\":1}","start_ts":1,"end_ts":2,"status":"ok","orphan":true,
      "attrs":{"gen_ai.operation.name":"text_completion","input.mime_type":"application/json",
               "http.status_code":200,"gen_ai.response.finish_reasons":["stop","length"],
               "nested.list":[{"a":1}],"plain":"p","model":"m"},
      "children":[{"id":"0000000000000b0b","parent_id":"eee19b7ec3c1b174","type":"TOOL",
                   "start_ts":1,"end_ts":2,"children":[]}]}]})";
  std::vector<std::string_view> docs = {doc};
  std::string out, err;
  ASSERT_TRUE(append_otlp_body(docs, &out, &err)) << err;
  const json spans = json::parse(out)["resourceSpans"][0]["scopeSpans"][0]["spans"];
  ASSERT_EQ(spans.size(), 2u);
  const json& span = spans[0];
  EXPECT_EQ(span["parentSpanId"], "aaaaaaaaaaaaaaaa");
  EXPECT_EQ(spans[1]["parentSpanId"], "eee19b7ec3c1b174");
  EXPECT_EQ((*attr(span, "gen_ai.operation.name"))["stringValue"], "text_completion");
  EXPECT_EQ((*attr(span, "input.mime_type"))["stringValue"], "application/json");
  EXPECT_EQ((*attr(span, "http.status_code"))["intValue"], "200");
  EXPECT_EQ((*attr(span, "gen_ai.response.finish_reasons")),
            json::parse(R"({"arrayValue":{"values":[{"stringValue":"stop"},
                                                    {"stringValue":"length"}]}})"));
  EXPECT_EQ((*attr(span, "nested.list"))["stringValue"], R"([{"a":1}])");
  EXPECT_EQ((*attr(span, "sidetrace.attr.plain"))["stringValue"], "p");
  EXPECT_EQ((*attr(span, "gen_ai.request.model"))["stringValue"], "m");
  // Each key once.
  std::set<std::string> keys;
  for (const json& a : span["attributes"])
    EXPECT_TRUE(keys.insert(a["key"].get<std::string>()).second) << a["key"];
}

TEST(UpstreamEncode, OtlpKindMapping) {
  std::string tmpl =
      R"({"trace_id":"t","revision":1,"events":[{"id":"x","type":"TYPE","children":[]}]})";
  std::map<std::string, std::string> want = {{"MESSAGE", "CHAIN"}, {"TOOL", "TOOL"},
                                             {"ROUTER", "CHAIN"},  {"SYSTEM", "CHAIN"},
                                             {"custom", "CHAIN"},  {"GENERATION", "LLM"}};
  for (auto& [type, kind] : want) {
    std::string doc = tmpl;
    doc.replace(doc.find("TYPE"), 4, type);
    std::vector<std::string_view> docs = {doc};
    std::string out, err;
    ASSERT_TRUE(append_otlp_body(docs, &out, &err));
    json span = json::parse(out)["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    EXPECT_EQ((*attr(span, "openinference.span.kind"))["stringValue"], kind) << type;
  }
  std::vector<std::string_view> bad = {"{not json"};
  std::string out, err;
  EXPECT_FALSE(append_otlp_body(bad, &out, &err));
}

TEST(UpstreamEncode, TruncatesLargestField) {
  std::string big(5000, 'x');
  std::string doc = R"({"trace_id":"t","events":[{"id":"a","input":"small","output":")" + big +
                    R"(","children":[{"id":"b","input":")" + std::string(3000, 'y') +
                    R"(","children":[]}]}]})";
  ASSERT_TRUE(truncate_largest_field(&doc));
  json j = json::parse(doc);
  EXPECT_EQ(j["events"][0]["output"], "[truncated 5002 bytes]");
  EXPECT_EQ(j["events"][0]["children"][0]["input"].get<std::string>().size(), 3000u);
  ASSERT_TRUE(truncate_largest_field(&doc));
  j = json::parse(doc);
  EXPECT_EQ(j["events"][0]["children"][0]["input"], "[truncated 3002 bytes]");
  EXPECT_FALSE(truncate_largest_field(&doc));  // only short fields left
}

TEST(UpstreamEncode, CountsEvents) {
  EXPECT_EQ(count_events(R"({"events":[]})"), 0u);
  std::string compact = json::parse(kDoc).dump();
  EXPECT_EQ(count_events(compact), 3u);
}

}  // namespace
}  // namespace sidetrace::upstream::detail

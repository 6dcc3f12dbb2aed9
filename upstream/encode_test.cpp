#include "upstream/detail/encode.h"

#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "otlp/proto/trace_service.pb.h"
#include "upstream/detail/otlp.h"
#include "upstream/testing/store_helpers.h"

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
    // gzip: level 1 through igzip, the others through zlib.
    for (int level : {1, 2, 9}) {
      std::string z, back;
      ASSERT_TRUE(compress(c, level, in, &z));
      if (c != Compression::kNone) {
        EXPECT_LT(z.size(), in.size() / 4);
      }
      if (c == Compression::kGzip) {
        // A gzip member (RFC 1952: ID1 ID2 CM=deflate), not a zlib stream.
        ASSERT_GE(z.size(), 18u);
        EXPECT_EQ(z.substr(0, 3), std::string("\x1f\x8b\x08")) << level;
      }
      ASSERT_TRUE(decompress(c, z, &back));
      EXPECT_EQ(back, in);
    }
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
    for (int level : {1, 6}) {
      ASSERT_TRUE(enc.native(Compression::kGzip, level, docs, &z));
      ASSERT_TRUE(decompress(Compression::kGzip, z, &back, 1u << 30, chunk));
      EXPECT_EQ(back, want) << "chunk " << chunk << ", level " << level;
    }
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

// ---- the protobuf encoding against the JSON encoding --------------------------

namespace pb_trace = opentelemetry::proto::trace::v1;
namespace pb_common = opentelemetry::proto::common::v1;
using opentelemetry::proto::collector::trace::v1::ExportTraceServiceRequest;

std::string to_hex(const std::string& bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}

// Compares an AnyValue decoded from protobuf with its OTLP JSON form.
void expect_same_value(const pb_common::AnyValue& v, const json& j, const std::string& where) {
  switch (v.value_case()) {
    case pb_common::AnyValue::kStringValue:
      EXPECT_EQ(j, json({{"stringValue", v.string_value()}})) << where;
      break;
    case pb_common::AnyValue::kBoolValue:
      EXPECT_EQ(j, json({{"boolValue", v.bool_value()}})) << where;
      break;
    case pb_common::AnyValue::kIntValue:
      EXPECT_EQ(j, json({{"intValue", std::to_string(v.int_value())}})) << where;
      break;
    case pb_common::AnyValue::kDoubleValue:
      ASSERT_TRUE(j.contains("doubleValue")) << where << ": " << j;
      EXPECT_EQ(j["doubleValue"].get<double>(), v.double_value()) << where;
      EXPECT_EQ(j.size(), 1u) << where;
      break;
    case pb_common::AnyValue::kArrayValue: {
      ASSERT_TRUE(j.contains("arrayValue")) << where << ": " << j;
      const json& values = j["arrayValue"]["values"];
      ASSERT_EQ(static_cast<size_t>(v.array_value().values_size()), values.size()) << where;
      for (int k = 0; k < v.array_value().values_size(); ++k)
        expect_same_value(v.array_value().values(k), values[k], where + "[]");
      break;
    }
    default:
      ADD_FAILURE() << where << ": a value kind the encoder never writes";
  }
}

void expect_same_attrs(const google::protobuf::RepeatedPtrField<pb_common::KeyValue>& attrs,
                       const json& j, const std::string& where) {
  ASSERT_TRUE(j.is_array()) << where;
  ASSERT_EQ(static_cast<size_t>(attrs.size()), j.size()) << where;
  for (int i = 0; i < attrs.size(); ++i) {
    EXPECT_EQ(attrs[i].key(), j[i]["key"]) << where;
    expect_same_value(attrs[i].value(), j[i]["value"], where + "." + attrs[i].key());
  }
}

// Decodes `bin` with the protobuf library and compares it, field by field,
// with the OTLP JSON body `text`.
void expect_same_request(const std::string& bin, const std::string& text) {
  ExportTraceServiceRequest req;
  ASSERT_TRUE(req.ParseFromString(bin));
  // The encoding is canonical: the library writes what it decoded to the
  // same bytes (fields in number order, defaults left out).
  EXPECT_EQ(req.SerializeAsString(), bin);
  json body = json::parse(text);
  ASSERT_EQ(static_cast<size_t>(req.resource_spans_size()), body["resourceSpans"].size());
  for (int r = 0; r < req.resource_spans_size(); ++r) {
    const auto& rs = req.resource_spans(r);
    const json& jrs = body["resourceSpans"][r];
    std::string where = "resourceSpans[" + std::to_string(r) + "]";
    expect_same_attrs(rs.resource().attributes(), jrs["resource"]["attributes"], where);
    ASSERT_EQ(rs.scope_spans_size(), 1);
    ASSERT_EQ(jrs["scopeSpans"].size(), 1u);
    const auto& ss = rs.scope_spans(0);
    const json& jss = jrs["scopeSpans"][0];
    EXPECT_EQ(ss.scope().name(), jss["scope"]["name"]);
    EXPECT_EQ(ss.scope().version(), jss["scope"]["version"]);
    ASSERT_EQ(static_cast<size_t>(ss.spans_size()), jss["spans"].size());
    for (int k = 0; k < ss.spans_size(); ++k) {
      const pb_trace::Span& s = ss.spans(k);
      const json& js = jss["spans"][k];
      std::string sw = where + ".spans[" + std::to_string(k) + "]";
      EXPECT_EQ(s.trace_id().size(), 16u) << sw;
      EXPECT_EQ(s.span_id().size(), 8u) << sw;
      EXPECT_EQ(to_hex(s.trace_id()), js["traceId"]) << sw;
      EXPECT_EQ(to_hex(s.span_id()), js["spanId"]) << sw;
      if (s.parent_span_id().empty()) {
        EXPECT_FALSE(js.contains("parentSpanId")) << sw;
      } else {
        EXPECT_EQ(s.parent_span_id().size(), 8u) << sw;
        EXPECT_EQ(to_hex(s.parent_span_id()), js["parentSpanId"]) << sw;
      }
      EXPECT_EQ(s.name(), js["name"]) << sw;
      EXPECT_EQ(static_cast<int>(s.kind()), js["kind"].get<int>()) << sw;
      EXPECT_EQ(std::to_string(s.start_time_unix_nano()), js["startTimeUnixNano"]) << sw;
      EXPECT_EQ(std::to_string(s.end_time_unix_nano()), js["endTimeUnixNano"]) << sw;
      expect_same_attrs(s.attributes(), js["attributes"], sw);
      ASSERT_EQ(static_cast<size_t>(s.events_size()), js["events"].size()) << sw;
      for (int e = 0; e < s.events_size(); ++e) {
        EXPECT_EQ(std::to_string(s.events(e).time_unix_nano()), js["events"][e]["timeUnixNano"]);
        EXPECT_EQ(s.events(e).name(), js["events"][e]["name"]);
        expect_same_attrs(s.events(e).attributes(), js["events"][e]["attributes"], sw + ".event");
      }
      EXPECT_EQ(static_cast<int>(s.status().code()), js["status"]["code"].get<int>()) << sw;
      if (s.status().message().empty()) {
        EXPECT_FALSE(js["status"].contains("message")) << sw;
      } else {
        EXPECT_EQ(s.status().message(), js["status"]["message"]) << sw;
      }
      EXPECT_EQ(s.links_size(), 0);
    }
  }
}

// Documents that cover the mapping: kDoc (every event kind and feedback), a
// feedback-only trace, a part, values of every JSON type, text that needs
// escaping, and revisions that carry only their changes.
std::vector<std::string> sample_docs() {
  std::vector<std::string> docs = {kDoc};
  docs.push_back(
      R"({"trace_id":"0af7651916cd43dd8448eb211c80319c","revision":1,"conversation_id":null,)"
      R"("session_id":null,"user":{},"metadata":{},"start_ts":null,"end_ts":null,"status":"ok",)"
      R"("partial":true,"part":null,"trace_changed":true,"events":[],"feedback":[{"tag":null,)"
      R"("text":"only \"feedback\"\n\u0001","score":-2,"target_id":"gone","ts":77,"changed":true}]})");
  docs.push_back(
      R"({"trace_id":"t-part","revision":4,"part":3,"trace_changed":true,"user":{"id":12345},)"
      R"("metadata":{"k":[1,2,{"x":null}]},"status":"error","events":[{"id":"e1","type":"TOOL",)"
      R"("name":"tool ü \\ \"q\"","input":[1,"two",3.5,true,null],"output":123456789012,)"
      R"("start_ts":5,"end_ts":3,"status":"error","error":"bad\tthing","orphan":true,)"
      R"("parent_id":"elsewhere","unfinished":false,"changed":true,"attrs":{"neg":-7,)"
      R"("big":18446744073709551615,"f":1e300,"t":false,"nested":{"a":[]},"nul":null,)"
      R"("model":"m","temperature":1,"list":["a",2,-3,4.5,true,18446744073709551615],)"
      R"("empty":[],"deep":[[1]],"gen_ai.operation.name":"embeddings"},)"
      R"("children":[{"id":"e2","type":"AGENT","start_ts":6,"end_ts":9,"changed":true,)"
      R"("children":[]}]}],"feedback":[]})");
  return docs;
}

TEST(UpstreamEncode, OtlpProtobufCarriesWhatTheJsonEncodingCarries) {
  std::vector<std::string> docs = sample_docs();
  std::vector<std::string_view> all(docs.begin(), docs.end());
  // Each document alone, and all in one request.
  std::vector<std::vector<std::string_view>> requests;
  for (auto& d : docs)
    requests.push_back({d});
  requests.push_back(all);
  for (const auto& views : requests) {
    std::string bin, text, err;
    ASSERT_TRUE(append_otlp_protobuf(views, &bin, &err)) << err;
    ASSERT_TRUE(append_otlp_body(views, &text, &err)) << err;
    ASSERT_TRUE(json::accept(text)) << text;
    expect_same_request(bin, text);
  }
  // What the library decodes is the mapping (spot checks; the JSON
  // encoding's mapping is checked field by field above).
  std::string bin, err;
  ASSERT_TRUE(append_otlp_protobuf(all, &bin, &err));
  ExportTraceServiceRequest req;
  ASSERT_TRUE(req.ParseFromString(bin));
  ASSERT_EQ(req.resource_spans_size(), 3);
  const auto& spans = req.resource_spans(0).scope_spans(0).spans();
  ASSERT_EQ(spans.size(), 3);
  EXPECT_EQ(to_hex(spans[0].span_id()), "a1b2c3d4e5f60718");
  EXPECT_EQ(spans[1].parent_span_id(), spans[0].span_id());
  EXPECT_EQ(spans[1].kind(), pb_trace::Span::SPAN_KIND_CLIENT);
  EXPECT_EQ(spans[1].status().code(), pb_trace::Status::STATUS_CODE_ERROR);
  EXPECT_EQ(spans[1].status().message(), "boom");
  EXPECT_EQ(spans[1].start_time_unix_nano(), 2000u);
  EXPECT_EQ(spans[2].status().code(), pb_trace::Status::STATUS_CODE_UNSET);
  // The feedback-only trace: one synthetic root span with the feedback.
  const auto& lone = req.resource_spans(1).scope_spans(0).spans();
  ASSERT_EQ(lone.size(), 1);
  EXPECT_EQ(lone[0].name(), "trace");
  ASSERT_EQ(lone[0].events_size(), 1);
  EXPECT_EQ(lone[0].events(0).time_unix_nano(), 77u);
  // Values of every type.
  const auto& part = req.resource_spans(2);
  std::map<std::string, pb_common::AnyValue> a;
  for (const auto& kv : part.scope_spans(0).spans(0).attributes())
    a[kv.key()] = kv.value();
  EXPECT_EQ(a["sidetrace.attr.neg"].int_value(), -7);
  EXPECT_EQ(a["sidetrace.attr.big"].string_value(), "18446744073709551615");  // past int64
  EXPECT_EQ(a["sidetrace.attr.f"].double_value(), 1e300);
  EXPECT_FALSE(a["sidetrace.attr.t"].bool_value());
  EXPECT_EQ(a["sidetrace.attr.nested"].string_value(), R"({"a":[]})");
  const auto& list = a["sidetrace.attr.list"].array_value().values();
  ASSERT_EQ(list.size(), 6);
  EXPECT_EQ(list[0].string_value(), "a");
  EXPECT_EQ(list[1].int_value(), 2);
  EXPECT_EQ(list[2].int_value(), -3);
  EXPECT_EQ(list[3].double_value(), 4.5);
  EXPECT_TRUE(list[4].bool_value());
  EXPECT_EQ(list[5].string_value(), "18446744073709551615");
  EXPECT_EQ(a["sidetrace.attr.empty"].array_value().values_size(), 0);
  EXPECT_TRUE(a["sidetrace.attr.empty"].has_array_value());
  EXPECT_EQ(a["sidetrace.attr.deep"].string_value(), "[[1]]");
  // An OpenTelemetry-named attribute replaces the one derived from the type.
  EXPECT_EQ(a["gen_ai.operation.name"].string_value(), "embeddings");
  // The orphan keeps its parent's id; its child is under it.
  const auto& part_spans = part.scope_spans(0).spans();
  EXPECT_EQ(to_hex(part_spans[0].parent_span_id()), otlp_id("elsewhere", 16));
  EXPECT_EQ(part_spans[1].parent_span_id(), part_spans[0].span_id());
  EXPECT_EQ(a.count("sidetrace.attr.nul"), 0u);
  EXPECT_EQ(a["gen_ai.request.temperature"].int_value(), 1);
  EXPECT_EQ(a["output.value"].string_value(), "123456789012");
  EXPECT_EQ(a["input.value"].string_value(), R"([1,"two",3.5,true,null])");
  EXPECT_EQ(a["user.id"].string_value(), "12345");
  EXPECT_EQ(part.scope_spans(0).spans(0).name(), "tool ü \\ \"q\"");
  bool has_part = false;
  for (const auto& kv : part.resource().attributes()) {
    if (kv.key() == "sidetrace.trace.part") {
      has_part = true;
      EXPECT_EQ(kv.value().int_value(), 3);
    }
  }
  EXPECT_TRUE(has_part);
}

// One encoder builds request after request, reusing its buffers (large
// batches and small, escaped strings kept for the request in between): each
// is the request a fresh encoder builds.
TEST(UpstreamEncode, OtlpEncoderReusedAcrossRequests) {
  std::vector<std::string> docs = sample_docs();
  std::vector<std::string> big;
  for (int i = 0; i < 400; ++i)
    big.push_back(
        testing::make_doc("trace-" + std::to_string(i), 1 + i % 3, 3, std::string(200, 'x')));
  std::vector<std::string_view> many(big.begin(), big.end());
  std::vector<std::string_view> few(docs.begin(), docs.end());
  std::vector<std::string_view> none;
  BodyEncoder enc;
  std::string out = "left over";
  for (int round = 0; round < 2; ++round) {
    for (const auto* views : {&few, &many, &none, &few}) {
      for (OtlpEncoding encoding : {OtlpEncoding::kProtobuf, OtlpEncoding::kJson}) {
        for (Compression c : {Compression::kNone, Compression::kGzip, Compression::kZstd}) {
          std::string want, err;
          if (encoding == OtlpEncoding::kProtobuf) {
            ASSERT_TRUE(append_otlp_protobuf(*views, &want, &err));
          } else {
            ASSERT_TRUE(append_otlp_body(*views, &want, &err));
          }
          ASSERT_TRUE(enc.otlp(encoding, c, 1, *views, &out, &err)) << err;
          std::string back;
          ASSERT_TRUE(decompress(c, out, &back));
          EXPECT_EQ(back, want) << views->size() << " documents";
        }
      }
    }
  }
  std::vector<std::string_view> bad = {"{not json"};
  std::string err;
  EXPECT_FALSE(enc.otlp(OtlpEncoding::kProtobuf, Compression::kNone, 1, bad, &out, &err));
  EXPECT_EQ(err, "trace document is not a JSON object");
}

// ---- revisions after the first carry their changes only ----------------------

// Revision `rev` of a trace: root r (children c1, c2 under it), a second root
// s, whole-trace feedback and feedback on c2; `changed` lists what is
// changed ("trace", event ids, "fb0"/"fb1").
std::string delta_doc(int rev, const std::set<std::string>& changed) {
  auto flag = [&](const std::string& what) { return changed.count(what) ? "true" : "false"; };
  auto ev = [&](const std::string& id, const std::string& kids) {
    return R"({"id":")" + id + R"(","type":"TOOL","start_ts":1,"end_ts":2,"status":"ok",)" +
           R"("orphan":false,"unfinished":false,"changed":)" + flag(id) + R"(,"children":[)" +
           kids + "]}";
  };
  return R"({"trace_id":"delta","revision":)" + std::to_string(rev) +
         R"(,"session_id":"s","part":null,"trace_changed":)" + flag("trace") + R"(,"events":[)" +
         ev("r", ev("c1", "") + "," + ev("c2", "")) + "," + ev("s", "") +
         R"(],"feedback":[{"tag":"all","score":1,"target_id":null,"ts":5,"changed":)" +
         flag("fb0") + R"(},{"tag":"one","score":0,"target_id":"c2","ts":6,"changed":)" +
         flag("fb1") + "}]}";
}

// The spans a request carries: event id -> feedback tags on its span.
std::map<std::string, std::vector<std::string>> spans_sent(const std::string& doc) {
  std::vector<std::string_view> views = {doc};
  std::string bin, err;
  EXPECT_TRUE(append_otlp_protobuf(views, &bin, &err)) << err;
  ExportTraceServiceRequest req;
  EXPECT_TRUE(req.ParseFromString(bin));
  std::map<std::string, std::vector<std::string>> out;
  for (const auto& rs : req.resource_spans()) {
    for (const auto& s : rs.scope_spans(0).spans()) {
      std::string id;
      for (const auto& kv : s.attributes()) {
        if (kv.key() == "sidetrace.event.id") id = kv.value().string_value();
      }
      auto& tags = out[id.empty() ? s.name() : id];
      for (const auto& e : s.events()) {
        for (const auto& kv : e.attributes()) {
          if (kv.key() == "feedback.tag") tags.push_back(kv.value().string_value());
        }
      }
    }
  }
  std::string text;
  EXPECT_TRUE(append_otlp_body(views, &text, &err));
  expect_same_request(bin, text);  // the JSON encoding carries the same
  return out;
}

TEST(UpstreamEncode, OtlpLaterRevisionsCarryOnlyTheirChanges) {
  using Sent = std::map<std::string, std::vector<std::string>>;
  // Revision 1 (all flags true): every span, each with its feedback.
  const std::set<std::string> all = {"trace", "r", "c1", "c2", "s", "fb0", "fb1"};
  EXPECT_EQ(spans_sent(delta_doc(1, all)),
            (Sent{{"r", {"all"}}, {"c1", {}}, {"c2", {"one"}}, {"s", {}}}));
  // The flags of revision 1 do not matter: it is always whole.
  EXPECT_EQ(spans_sent(delta_doc(1, {})).size(), 4u);
  // A changed child alone: its span, still under its parent's id.
  EXPECT_EQ(spans_sent(delta_doc(2, {"c1"})), (Sent{{"c1", {}}}));
  {
    std::string doc = delta_doc(2, {"c1"});
    std::vector<std::string_view> views = {doc};
    std::string bin, err;
    ASSERT_TRUE(append_otlp_protobuf(views, &bin, &err));
    ExportTraceServiceRequest req;
    ASSERT_TRUE(req.ParseFromString(bin));
    EXPECT_EQ(to_hex(req.resource_spans(0).scope_spans(0).spans(0).parent_span_id()),
              otlp_id("r", 16));
  }
  // New feedback on c2: c2 with all its feedback, and the root span (the
  // feedback counts and annotations on the trace may be read there).
  EXPECT_EQ(spans_sent(delta_doc(2, {"fb1"})), (Sent{{"r", {"all"}}, {"c2", {"one"}}}));
  // New whole-trace feedback: the root span with all of its feedback.
  EXPECT_EQ(spans_sent(delta_doc(3, {"fb0"})), (Sent{{"r", {"all"}}}));
  // A changed trace context: the root span.
  EXPECT_EQ(spans_sent(delta_doc(2, {"trace"})), (Sent{{"r", {"all"}}}));
  // A changed span that has unchanged feedback keeps it (an upsert replaces
  // the whole span).
  EXPECT_EQ(spans_sent(delta_doc(2, {"c2", "s"})), (Sent{{"c2", {"one"}}, {"s", {}}}));
  // Nothing changed (a resent duplicate): no resourceSpans at all.
  EXPECT_TRUE(spans_sent(delta_doc(2, {})).empty());
  // A document from before the flags: whole.
  std::string old = R"({"trace_id":"x","revision":2,"events":[{"id":"a","children":[]}],)"
                    R"("feedback":[{"tag":"t","ts":1}]})";
  EXPECT_EQ(spans_sent(old), (Sent{{"a", {"t"}}}));
  // A feedback-only trace sends its synthetic span when feedback changed.
  std::string lone = R"({"trace_id":"y","revision":2,"trace_changed":false,"events":[],)"
                     R"("feedback":[{"tag":"a","ts":1,"changed":false},)"
                     R"({"tag":"b","ts":2,"changed":true}]})";
  EXPECT_EQ(spans_sent(lone), (Sent{{"trace", {"a", "b"}}}));
  lone.replace(lone.rfind("true"), 4, "false");
  EXPECT_TRUE(spans_sent(lone).empty());
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
  EXPECT_EQ(count_events(""), 0u);
  EXPECT_EQ(count_events("["), 0u);
  EXPECT_EQ(count_events(R"("children":[])"), 1u);
  // Text in a value that looks like the key is escaped: not an event.
  EXPECT_EQ(count_events(R"({"input":"[\"children\":[","events":[{"children":[[]]}]})"), 1u);
}

}  // namespace
}  // namespace sidetrace::upstream::detail

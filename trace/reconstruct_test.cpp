#include "trace/reconstruct.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <msgpack.hpp>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "ipc/event.h"

namespace sidetrace::trace {
namespace {

using Packer = msgpack::packer<msgpack::sbuffer>;
using nlohmann::json;

constexpr std::string_view kTraceId = "0af7651916cd43dd8448eb211c80319c";
constexpr uint64_t kT0 = 1'700'000'000'000'000'000ull;  // ns
constexpr uint64_t kMs = 1'000'000;

// A message field value: a string, an integer, a float, or raw msgpack bytes
// (for maps, arrays, bin, ext...).
struct V {
  enum Type { kStr, kInt, kUint, kDouble, kRaw } type;
  std::string s;
  int64_t i = 0;
  uint64_t u = 0;
  double d = 0;
};
V S(std::string s) {
  return V{V::kStr, std::move(s)};
}
V I(int64_t i) {
  return V{V::kInt, {}, i};
}
V U(uint64_t u) {
  return V{V::kUint, {}, 0, u};
}
V D(double d) {
  return V{V::kDouble, {}, 0, 0, d};
}
V Raw(std::string bytes) {
  return V{V::kRaw, std::move(bytes)};
}

using Fields = std::vector<std::pair<std::string, V>>;

void pack_value(Packer& p, msgpack::sbuffer& buf, const V& v) {
  switch (v.type) {
    case V::kStr:
      p.pack_str(static_cast<uint32_t>(v.s.size()));
      p.pack_str_body(v.s.data(), static_cast<uint32_t>(v.s.size()));
      break;
    case V::kInt:
      p.pack_int64(v.i);
      break;
    case V::kUint:
      p.pack_uint64(v.u);
      break;
    case V::kDouble:
      p.pack_double(v.d);
      break;
    case V::kRaw:
      buf.write(v.s.data(), v.s.size());
      break;
  }
}

std::string pack_map(const Fields& fields) {
  msgpack::sbuffer buf;
  Packer p(buf);
  p.pack_map(static_cast<uint32_t>(fields.size()));
  for (const auto& [k, v] : fields) {
    p.pack(k);
    pack_value(p, buf, v);
  }
  return std::string(buf.data(), buf.size());
}

// A protocol message of `kind` for the test trace, plus `extra` fields.
std::string msg(std::string kind, Fields extra, std::string_view trace_id = kTraceId) {
  Fields f{{"v", U(1)}, {"kind", S(std::move(kind))}, {"trace_id", S(std::string(trace_id))}};
  for (auto& e : extra)
    f.push_back(std::move(e));
  return pack_map(f);
}

struct Input {
  std::vector<std::string> raws;
  std::vector<uint64_t> recv;  // receive time per message; defaults to kT0
  std::vector<StoredMessage> stored() const {
    std::vector<StoredMessage> out;
    for (size_t k = 0; k < raws.size(); ++k) {
      out.push_back(StoredMessage{k + 1, k < recv.size() ? recv[k] : kT0, raws[k]});
    }
    return out;
  }
};

BuildResult build(const std::vector<std::string>& raws, BuildOptions options = {}) {
  Input in{raws, {}};
  auto stored = in.stored();
  return build_trace(kTraceId, stored, options);
}

json parse(const BuildResult& r) {
  EXPECT_TRUE(json::accept(r.document)) << r.document;
  return json::parse(r.document);
}

// The event with `id` anywhere in the tree, or null.
const json* find_event(const json& events, std::string_view id) {
  for (const auto& e : events) {
    if (e["id"] == id) return &e;
    if (const json* c = find_event(e["children"], id)) return c;
  }
  return nullptr;
}

std::vector<std::string> reversed(std::vector<std::string> v) {
  std::reverse(v.begin(), v.end());
  return v;
}

TEST(TraceBuildTrace, StartAndEndFormOneEventWhateverTheirOrder) {
  const std::vector<std::string> msgs = {
      msg("start", {{"id", S("a")},
                    {"type", S("GENERATION")},
                    {"name", S("llm")},
                    {"input", S("hi")},
                    {"ts", U(kT0)}}),
      msg("end", {{"id", S("a")}, {"output", S("hello")}, {"ts", U(kT0 + 1500 * 1000)}}),
  };
  const BuildResult fwd = build(msgs);
  const BuildResult rev = build(reversed(msgs));
  EXPECT_EQ(fwd.document, rev.document);
  EXPECT_TRUE(fwd.complete);
  EXPECT_EQ(fwd.events, 1u);
  const json doc = parse(fwd);
  ASSERT_EQ(doc["events"].size(), 1u);
  const json& e = doc["events"][0];
  EXPECT_EQ(e["id"], "a");
  EXPECT_EQ(e["type"], "GENERATION");
  EXPECT_EQ(e["name"], "llm");
  EXPECT_EQ(e["input"], "hi");
  EXPECT_EQ(e["output"], "hello");
  EXPECT_EQ(e["start_ts"], kT0);
  EXPECT_EQ(e["end_ts"], kT0 + 1500 * 1000);
  EXPECT_DOUBLE_EQ(e["duration_ms"].get<double>(), 1.5);
  EXPECT_EQ(e["status"], "ok");
  EXPECT_EQ(doc["status"], "ok");
  EXPECT_EQ(doc["start_ts"], kT0);
  EXPECT_EQ(doc["end_ts"], kT0 + 1500 * 1000);
  EXPECT_EQ(fwd.start_ts_ns, kT0);
  EXPECT_EQ(fwd.end_ts_ns, kT0 + 1500 * 1000);
}

TEST(TraceBuildTrace, EndFieldsMergeIntoTheEvent) {
  const BuildResult r = build({
      msg("end", {{"id", S("a")},
                  {"ts", U(kT0 + 10)},
                  {"attrs", Raw(pack_map({{"output_tokens", I(7)}, {"model", S("m2")}}))}}),
      msg("start", {{"id", S("a")},
                    {"type", S("GENERATION")},
                    {"ts", U(kT0)},
                    {"attrs", Raw(pack_map({{"model", S("m1")}, {"input_tokens", I(3)}}))}}),
  });
  const json e = parse(r)["events"][0];
  EXPECT_EQ(e["attrs"], json::parse(R"({"model":"m2","input_tokens":3,"output_tokens":7})"));
  // keys keep the position of their first appearance in the canonical order
  EXPECT_EQ(e["attrs"].dump(), R"({"input_tokens":3,"model":"m2","output_tokens":7})");
}

TEST(TraceBuildTrace, EndWinsOverStartEvenWhenItsClockIsEarlier) {
  const BuildResult r = build({
      msg("start",
          {{"id", S("a")}, {"type", S("TOOL")}, {"ts", U(kT0 + 100)}, {"status", S("error")}}),
      msg("end", {{"id", S("a")}, {"ts", U(kT0)}, {"status", S("ok")}}),
  });
  const json e = parse(r)["events"][0];
  EXPECT_EQ(e["status"], "ok");
  EXPECT_EQ(e["duration_ms"], 0);  // negative spans clamp to zero
}

TEST(TraceBuildTrace, ChildBeforeParentIsNestedUnderIt) {
  const std::vector<std::string> msgs = {
      msg("event",
          {{"id", S("c2")}, {"parent_id", S("p")}, {"type", S("TOOL")}, {"ts", U(kT0 + 20)}}),
      msg("event",
          {{"id", S("c1")}, {"parent_id", S("p")}, {"type", S("TOOL")}, {"ts", U(kT0 + 10)}}),
      msg("event",
          {{"id", S("c0")}, {"parent_id", S("p")}, {"type", S("TOOL")}, {"ts", U(kT0 + 10)}}),
      msg("event", {{"id", S("p")}, {"type", S("AGENT")}, {"ts", U(kT0)}, {"latency_ms", U(5)}}),
  };
  const BuildResult r = build(msgs);
  EXPECT_EQ(r.document, build(reversed(msgs)).document);
  const json doc = parse(r);
  ASSERT_EQ(doc["events"].size(), 1u);
  const json& p = doc["events"][0];
  EXPECT_EQ(p["id"], "p");
  ASSERT_EQ(p["children"].size(), 3u);
  // sorted by start_ts, then id
  EXPECT_EQ(p["children"][0]["id"], "c0");
  EXPECT_EQ(p["children"][1]["id"], "c1");
  EXPECT_EQ(p["children"][2]["id"], "c2");
  EXPECT_EQ(p["children"][0]["parent_id"], "p");
  EXPECT_EQ(r.orphans, 0u);
}

TEST(TraceBuildTrace, TraceContextArrivingLastIsMergedKeyByKey) {
  const BuildResult r = build({
      msg("event", {{"id", S("a")}, {"type", S("MESSAGE")}, {"ts", U(kT0)}}),
      msg("trace", {{"ts", U(kT0 + 5)},
                    {"conversation_id", S("conv-2")},
                    {"metadata", Raw(pack_map({{"region", S("us")}}))},
                    {"user", Raw(pack_map({{"plan", S("pro")}}))}}),
      msg("trace", {{"ts", U(kT0 + 1)},
                    {"conversation_id", S("conv-1")},
                    {"session_id", S("s-1")},
                    {"metadata", Raw(pack_map({{"environment", S("prod")}, {"region", S("eu")}}))},
                    {"user", Raw(pack_map({{"id", S("u-1")}}))}}),
  });
  const json doc = parse(r);
  EXPECT_EQ(doc["conversation_id"], "conv-2");
  EXPECT_EQ(doc["session_id"], "s-1");
  EXPECT_EQ(doc["interaction_id"], nullptr);
  EXPECT_EQ(doc["channel_id"], nullptr);
  EXPECT_EQ(doc["metadata"], json::parse(R"({"environment":"prod","region":"us"})"));
  EXPECT_EQ(doc["user"], json::parse(R"({"id":"u-1","plan":"pro"})"));
  // Context does not count as an event and does not move the trace's times.
  EXPECT_EQ(r.events, 1u);
  EXPECT_EQ(doc["end_ts"], kT0);
}

TEST(TraceBuildTrace, LatencyMsDerivesTheEnd) {
  const BuildResult r = build({
      msg("event", {{"id", S("a")}, {"type", S("TOOL")}, {"ts", U(kT0)}, {"latency_ms", U(250)}}),
      msg("start", {{"id", S("b")}, {"type", S("TOOL")}, {"ts", U(kT0 + 1000)}}),
      msg("end", {{"id", S("b")}, {"latency_ms", U(40)}}),  // no ts: start + latency
      msg("event", {{"id", S("c")},
                    {"type", S("TOOL")},
                    {"ts", U(kT0)},
                    {"end_ts", U(kT0 + 3 * kMs)},
                    {"latency_ms", U(999)}}),  // end_ts wins
  });
  const json doc = parse(r);
  const json* a = find_event(doc["events"], "a");
  const json* b = find_event(doc["events"], "b");
  const json* c = find_event(doc["events"], "c");
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ((*a)["end_ts"], kT0 + 250 * kMs);
  EXPECT_EQ((*a)["duration_ms"], 250);
  EXPECT_EQ((*b)["end_ts"], kT0 + 1000 + 40 * kMs);
  EXPECT_EQ((*c)["end_ts"], kT0 + 3 * kMs);
  EXPECT_EQ(doc["end_ts"], kT0 + 250 * kMs);
  EXPECT_DOUBLE_EQ(doc["duration_ms"].get<double>(), 250.0);
}

TEST(TraceBuildTrace, MissingParentMakesAnOrphanAtTheRoot) {
  const BuildResult r = build({
      msg("event", {{"id", S("root")}, {"type", S("AGENT")}, {"ts", U(kT0)}}),
      msg("event",
          {{"id", S("lost")}, {"parent_id", S("gone")}, {"type", S("TOOL")}, {"ts", U(kT0 + 1)}}),
  });
  EXPECT_EQ(r.orphans, 1u);
  const json doc = parse(r);
  ASSERT_EQ(doc["events"].size(), 2u);
  EXPECT_EQ(doc["events"][0]["orphan"], false);
  EXPECT_EQ(doc["events"][1]["id"], "lost");
  EXPECT_EQ(doc["events"][1]["orphan"], true);
  EXPECT_EQ(doc["events"][1]["parent_id"], "gone");
}

TEST(TraceBuildTrace, CyclesAreBrokenAtTheirSmallestId) {
  const std::vector<std::string> msgs = {
      msg("event", {{"id", S("b")}, {"parent_id", S("a")}, {"type", S("TOOL")}, {"ts", U(kT0)}}),
      msg("event", {{"id", S("a")}, {"parent_id", S("c")}, {"type", S("TOOL")}, {"ts", U(kT0)}}),
      msg("event", {{"id", S("c")}, {"parent_id", S("b")}, {"type", S("TOOL")}, {"ts", U(kT0)}}),
      msg("event", {{"id", S("d")}, {"parent_id", S("c")}, {"type", S("TOOL")}, {"ts", U(kT0)}}),
      msg("event",
          {{"id", S("self")}, {"parent_id", S("self")}, {"type", S("TOOL")}, {"ts", U(kT0)}}),
  };
  const BuildResult r = build(msgs);
  EXPECT_EQ(r.document, build(reversed(msgs)).document);
  EXPECT_EQ(r.events, 5u);
  EXPECT_EQ(r.orphans, 2u);
  const json doc = parse(r);
  ASSERT_EQ(doc["events"].size(), 2u);
  const json& a = doc["events"][0];
  EXPECT_EQ(a["id"], "a");
  EXPECT_EQ(a["orphan"], true);
  ASSERT_EQ(a["children"].size(), 1u);
  EXPECT_EQ(a["children"][0]["id"], "b");
  EXPECT_EQ(a["children"][0]["children"][0]["id"], "c");
  EXPECT_EQ(a["children"][0]["children"][0]["children"][0]["id"], "d");
  EXPECT_EQ(doc["events"][1]["id"], "self");
  EXPECT_EQ(doc["events"][1]["orphan"], true);
  EXPECT_TRUE(doc["events"][1]["children"].empty());
}

TEST(TraceBuildTrace, LongChainsDoNotExhaustTheStack) {
  std::vector<std::string> msgs;
  const int n = 20000;
  for (int k = 0; k < n; ++k) {
    Fields f{{"id", S("e" + std::to_string(k))}, {"type", S("TOOL")}, {"ts", U(kT0 + k)}};
    if (k > 0) f.push_back({"parent_id", S("e" + std::to_string(k - 1))});
    msgs.push_back(msg("event", f));
  }
  const BuildResult r = build(msgs);
  EXPECT_EQ(r.events, static_cast<size_t>(n));
  EXPECT_EQ(r.orphans, 0u);
  EXPECT_TRUE(r.complete);
}

TEST(TraceBuildTrace, UnfinishedEventsAreMarkedOnlyWhenAsked) {
  const std::vector<std::string> msgs = {
      msg("event", {{"id", S("a")}, {"type", S("AGENT")}, {"ts", U(kT0)}, {"status", S("error")}}),
      msg("start", {{"id", S("b")}, {"type", S("TOOL")}, {"ts", U(kT0 + 1)}}),
  };
  const BuildResult open = build(msgs);
  EXPECT_FALSE(open.complete);
  EXPECT_EQ(open.unfinished, 1u);
  json doc = parse(open);
  EXPECT_EQ(doc["status"], "error");
  EXPECT_EQ(find_event(doc["events"], "b")->at("unfinished"), false);
  EXPECT_EQ(find_event(doc["events"], "b")->at("end_ts"), nullptr);
  EXPECT_EQ(find_event(doc["events"], "b")->at("duration_ms"), nullptr);

  const BuildResult marked = build(msgs, BuildOptions{.revision = 1, .mark_unfinished = true});
  doc = parse(marked);
  EXPECT_EQ(doc["status"], "unfinished");
  EXPECT_EQ(find_event(doc["events"], "b")->at("unfinished"), true);
  EXPECT_EQ(find_event(doc["events"], "a")->at("unfinished"), false);
}

TEST(TraceBuildTrace, EndWithoutStartIsIncomplete) {
  const BuildResult r = build({msg("end", {{"id", S("a")}, {"ts", U(kT0)}})});
  EXPECT_FALSE(r.complete);
  EXPECT_EQ(r.unfinished, 0u);
  const json e = parse(r)["events"][0];
  EXPECT_EQ(e["start_ts"], nullptr);
  EXPECT_EQ(e["end_ts"], kT0);
  EXPECT_EQ(e["type"], nullptr);
}

TEST(TraceBuildTrace, ErrorStatusPropagatesToTheTrace) {
  const BuildResult r = build({
      msg("start", {{"id", S("a")}, {"type", S("TOOL")}, {"ts", U(kT0)}}),
      msg("end",
          {{"id", S("a")}, {"ts", U(kT0 + 1)}, {"status", S("error")}, {"error", S("timeout")}}),
      msg("event", {{"id", S("b")}, {"type", S("TOOL")}, {"ts", U(kT0)}}),
  });
  const json doc = parse(r);
  EXPECT_EQ(doc["status"], "error");
  const json* a = find_event(doc["events"], "a");
  EXPECT_EQ((*a)["status"], "error");
  EXPECT_EQ((*a)["error"], "timeout");
  EXPECT_EQ(find_event(doc["events"], "b")->at("error"), nullptr);
}

TEST(TraceBuildTrace, FeedbackIsListedInTimeOrder) {
  const BuildResult r = build({
      msg("event", {{"id", S("a")}, {"type", S("GENERATION")}, {"ts", U(kT0)}}),
      msg("feedback",
          {{"tag", S("thumbs")}, {"score", D(0.5)}, {"target_id", S("a")}, {"ts", U(kT0 + 9)}}),
      msg("feedback", {{"text", S("great")}, {"score", I(1)}, {"ts", U(kT0 + 3)}}),
  });
  const json doc = parse(r);
  ASSERT_EQ(doc["feedback"].size(), 2u);
  const json& f0 = doc["feedback"][0];
  const json& f1 = doc["feedback"][1];
  EXPECT_EQ(f0, json::parse(R"({"tag":null,"text":"great","score":1,"target_id":null,"ts":)" +
                            std::to_string(kT0 + 3) + R"(,"changed":true})"));
  EXPECT_EQ(f1["target_id"], "a");
  EXPECT_EQ(f1["tag"], "thumbs");
  EXPECT_EQ(f1["score"], 0.5);
  EXPECT_EQ(r.events, 1u);
}

TEST(TraceBuildTrace, ValuesAreConvertedToJson) {
  msgpack::sbuffer bin, ext;
  Packer pb(bin), pe(ext);
  pb.pack_bin(2);
  pb.pack_bin_body("\x00\xff", 2);
  pe.pack_ext(3, 42);
  pe.pack_ext_body("abc", 3);
  const BuildResult r = build({msg(
      "event",
      {{"id", S("a")},
       {"type", S("TOOL")},
       {"name", S("bad\xff utf8")},
       {"ts", U(kT0)},
       {"input", Raw(std::string(bin.data(), bin.size()))},
       {"output", Raw(std::string(ext.data(), ext.size()))},
       {"attrs",
        Raw(pack_map({{"nan", D(std::nan(""))}, {"inf", D(INFINITY)}, {"ctl", S("\x01")}}))}})});
  const json e = parse(r)["events"][0];
  EXPECT_EQ(e["name"], "bad\xef\xbf\xbd utf8");
  EXPECT_EQ(e["input"], json::parse(R"({"$binary":"AP8="})"));
  EXPECT_EQ(e["output"], json::parse(R"({"$ext":42,"$data":"YWJj"})"));
  EXPECT_EQ(e["attrs"], json::parse(R"({"nan":null,"inf":null,"ctl":"\u0001"})"));
}

TEST(TraceBuildTrace, PartialAndRevisionAreCarried) {
  const std::vector<std::string> msgs = {
      msg("event", {{"id", S("a")}, {"type", S("TOOL")}, {"ts", U(kT0)}})};
  json doc = parse(build(msgs));
  EXPECT_EQ(doc["revision"], 1);
  EXPECT_EQ(doc["partial"], false);
  doc = parse(build(msgs, BuildOptions{.revision = 7, .mark_unfinished = false, .partial = true}));
  EXPECT_EQ(doc["revision"], 7);
  EXPECT_EQ(doc["partial"], true);
  EXPECT_EQ(doc["trace_id"], kTraceId);
}

TEST(TraceBuildTrace, KeySetIsFixed) {
  const BuildResult r = build({
      msg("event", {{"id", S("a")}, {"type", S("TOOL")}, {"ts", U(kT0)}}),
      msg("feedback", {{"ts", U(kT0)}}),
  });
  const json doc = parse(r);
  const auto keys = [](const json& o) {
    std::set<std::string> k;
    for (auto it = o.begin(); it != o.end(); ++it)
      k.insert(it.key());
    return k;
  };
  EXPECT_EQ(keys(doc),
            (std::set<std::string>{"trace_id", "revision", "conversation_id", "session_id",
                                   "interaction_id", "channel_id", "user", "metadata", "start_ts",
                                   "end_ts", "duration_ms", "status", "partial", "part",
                                   "trace_changed", "events", "feedback"}));
  EXPECT_EQ(keys(doc["events"][0]),
            (std::set<std::string>{"id", "parent_id", "type", "name", "input", "output", "start_ts",
                                   "end_ts", "duration_ms", "status", "error", "attrs", "orphan",
                                   "unfinished", "changed", "children"}));
  EXPECT_EQ(keys(doc["feedback"][0]),
            (std::set<std::string>{"tag", "text", "score", "target_id", "ts", "changed"}));
  // The order of the keys is fixed too: the new flags follow "part",
  // "unfinished" and "ts".
  EXPECT_NE(r.document.find(R"("part":null,"trace_changed":true,"events":)"), std::string::npos);
  EXPECT_NE(r.document.find(R"("unfinished":false,"changed":true,"children":)"), std::string::npos);
  EXPECT_NE(r.document.find(R"(,"changed":true}])"), std::string::npos);
  EXPECT_EQ(doc["user"], json::object());
  EXPECT_EQ(doc["events"][0]["attrs"], json::object());
  EXPECT_EQ(doc["events"][0]["input"], nullptr);
}

// A later revision marks what its new messages touched: events with a new
// start, end or event message, new feedback items, and the trace when a new
// `trace` message arrived. A duplicate of a message folded before changes
// nothing.
TEST(TraceBuildTrace, ChangedFlagsMarkWhatNewMessagesTouched) {
  const std::vector<std::string> raws = {
      msg("trace", {{"session_id", S("s1")}, {"ts", U(kT0)}}),               // seq 1
      msg("start", {{"id", S("a")}, {"type", S("AGENT")}, {"ts", U(kT0)}}),  // seq 2
      msg("event", {{"id", S("b")},
                    {"type", S("TOOL")},
                    {"parent_id", S("a")},
                    {"ts", U(kT0 + kMs)}}),                              // seq 3
      msg("feedback", {{"tag", S("early")}, {"ts", U(kT0 + 2 * kMs)}}),  // seq 4
      msg("end", {{"id", S("a")}, {"ts", U(kT0 + 5 * kMs)}}),            // seq 5
      msg("event", {{"id", S("c")},
                    {"type", S("TOOL")},
                    {"parent_id", S("a")},
                    {"ts", U(kT0 + 3 * kMs)}}),                         // seq 6
      msg("feedback", {{"tag", S("late")}, {"ts", U(kT0 + 9 * kMs)}}),  // seq 7
  };
  std::vector<StoredMessage> stored;
  for (size_t k = 0; k < raws.size(); ++k)
    stored.push_back(StoredMessage{k + 1, kT0, raws[k]});
  ASSERT_EQ(build_trace(kTraceId, stored, BuildOptions{}).events, 3u);
  // Revision 1 (changed_after_seq 0): everything is new.
  json doc = parse(build_trace(kTraceId, stored, BuildOptions{}));
  EXPECT_EQ(doc["trace_changed"], true);
  EXPECT_EQ(find_event(doc["events"], "a")->at("changed"), true);
  EXPECT_EQ(find_event(doc["events"], "b")->at("changed"), true);
  EXPECT_EQ(doc["feedback"][0]["changed"], true);

  // Revision 2 after seq 4: a's end, c and the late feedback are new.
  BuildOptions late{.revision = 2};
  late.changed_after_seq = 4;
  BuildResult r = build_trace(kTraceId, stored, late);
  doc = parse(r);
  EXPECT_EQ(doc["trace_changed"], false);
  EXPECT_EQ(find_event(doc["events"], "a")->at("changed"), true);
  EXPECT_EQ(find_event(doc["events"], "b")->at("changed"), false);
  EXPECT_EQ(find_event(doc["events"], "c")->at("changed"), true);
  ASSERT_EQ(doc["feedback"].size(), 2u);
  EXPECT_EQ(doc["feedback"][0]["tag"], "early");
  EXPECT_EQ(doc["feedback"][0]["changed"], false);
  EXPECT_EQ(doc["feedback"][1]["changed"], true);
  EXPECT_EQ(r.changed, 2u);

  // A duplicate of the trace message and of b's event, stored after seq 4,
  // is not a change; a new trace message is.
  stored.push_back(StoredMessage{8, kT0, raws[0]});
  stored.push_back(StoredMessage{9, kT0, raws[2]});
  doc = parse(build_trace(kTraceId, stored, late));
  EXPECT_EQ(doc["trace_changed"], false);
  EXPECT_EQ(find_event(doc["events"], "b")->at("changed"), false);
  const std::string user = msg("trace", {{"user", Raw(pack_map({{"id", S("u1")}}))}});
  stored.push_back(StoredMessage{10, kT0, user});
  doc = parse(build_trace(kTraceId, stored, late));
  EXPECT_EQ(doc["trace_changed"], true);
  EXPECT_EQ(doc["user"]["id"], "u1");

  // Apart from the flags, the document is the one revision 2 always was.
  json whole = parse(build_trace(kTraceId, stored, BuildOptions{.revision = 2}));
  const auto strip = [](json d) {
    d.erase("trace_changed");
    std::vector<json*> todo;
    for (auto& e : d["events"])
      todo.push_back(&e);
    while (!todo.empty()) {
      json* e = todo.back();
      todo.pop_back();
      e->erase("changed");
      for (auto& c : (*e)["children"])
        todo.push_back(&c);
    }
    for (auto& f : d["feedback"])
      f.erase("changed");
    return d;
  };
  EXPECT_EQ(strip(doc), strip(whole));
}

TEST(TraceBuildTrace, EmptyTraceIsValidAndIncomplete) {
  const BuildResult r = build({});
  EXPECT_FALSE(r.complete);
  const json doc = parse(r);
  EXPECT_EQ(doc["start_ts"], nullptr);
  EXPECT_EQ(doc["duration_ms"], nullptr);
  EXPECT_TRUE(doc["events"].empty());
}

TEST(TraceBuildTrace, BadMessagesAreSkippedAndCounted) {
  const BuildResult r = build({
      msg("event", {{"id", S("a")}, {"type", S("TOOL")}, {"ts", U(kT0)}}),
      std::string("\x93\x01\x02\x03", 4),  // not a map
      std::string("\xc1", 1),              // not msgpack
      msg("start", {{"id", S("b")}}),      // no type
      msg("event", {{"id", S("x")}, {"type", S("TOOL")}}, "another-trace"),
  });
  EXPECT_EQ(r.undecodable, 3u);
  EXPECT_EQ(r.foreign, 1u);
  EXPECT_EQ(r.events, 1u);
  EXPECT_TRUE(r.complete);
}

TEST(TraceBuildTrace, MissingTsFallsBackToTheEarliestReceiveTime) {
  const std::string start = msg("start", {{"id", S("a")}, {"type", S("TOOL")}});
  const std::string end = msg("end", {{"id", S("a")}});
  Input in{{start, end, start}, {kT0 + 100, kT0 + 900, kT0 + 50}};
  auto stored = in.stored();
  const BuildResult r = build_trace(kTraceId, stored, {});
  const json e = parse(r)["events"][0];
  EXPECT_EQ(e["start_ts"], kT0 + 50);
  EXPECT_EQ(e["end_ts"], kT0 + 900);
}

TEST(TraceBuildTrace, SequenceNumbersDoNotMatter) {
  const std::vector<std::string> raws = {
      msg("start", {{"id", S("a")}, {"type", S("TOOL")}, {"ts", U(kT0)}}),
      msg("end", {{"id", S("a")}, {"ts", U(kT0 + 5)}}),
  };
  Input in{raws, {}};
  auto stored = in.stored();
  const std::string base = build_trace(kTraceId, stored, {}).document;
  for (auto& m : stored)
    m.seq = 1000 - m.seq;
  EXPECT_EQ(build_trace(kTraceId, stored, {}).document, base);
}

// ---- property test ---------------------------------------------------------

class Gen {
 public:
  explicit Gen(uint64_t seed) : rng_(seed) {}

  uint64_t below(uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng_); }
  bool chance(int percent) { return below(100) < static_cast<uint64_t>(percent); }
  std::mt19937_64& rng() { return rng_; }

  std::string str() {
    static const std::string pieces[] = {"a",  "hello", "\xc3\xa9",           "\xff",     "\n",
                                         "\"", "\\",    std::string("\0", 1), "\xe2\x82", "x y"};
    std::string s;
    for (uint64_t k = below(4); k > 0; --k)
      s += pieces[below(std::size(pieces))];
    return s;
  }

  // Any msgpack value, nested up to `depth`.
  void value(Packer& p, int depth) {
    switch (below(depth > 0 ? 14 : 12)) {
      case 0:
        p.pack_nil();
        break;
      case 1:
        chance(50) ? p.pack_true() : p.pack_false();
        break;
      case 2:
        p.pack_uint64(rng_() >> below(64));
        break;
      case 3:
        p.pack_int64(-static_cast<int64_t>(rng_() >> (1 + below(63))));
        break;
      case 4:
        p.pack_float(static_cast<float>(below(1000)) / 7.0f);
        break;
      case 5: {
        const double specials[] = {std::nan(""), INFINITY, -INFINITY, 1e300, -0.0, 0.1};
        chance(50) ? p.pack_double(specials[below(std::size(specials))])
                   : p.pack_double(static_cast<double>(rng_()) / 3.0);
        break;
      }
      case 6:
      case 7: {
        const std::string s = str();
        p.pack_str(static_cast<uint32_t>(s.size()));
        p.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
        break;
      }
      case 8: {
        const std::string s = str();
        p.pack_bin(static_cast<uint32_t>(s.size()));
        p.pack_bin_body(s.data(), static_cast<uint32_t>(s.size()));
        break;
      }
      case 9: {
        const std::string s = str();
        p.pack_ext(s.size(), static_cast<int8_t>(below(100)));
        p.pack_ext_body(s.data(), s.size());
        break;
      }
      case 10: {
        const char body[8] = {0, 0, 0, 0, 0x65, 0x53, static_cast<char>(below(256)), 0};
        p.pack_ext(8, -1);
        p.pack_ext_body(body, 8);
        break;
      }
      case 11:
        p.pack_int8(static_cast<int8_t>(below(256)));
        break;
      case 12: {
        const uint32_t n = static_cast<uint32_t>(below(4));
        p.pack_array(n);
        for (uint32_t k = 0; k < n; ++k)
          value(p, depth - 1);
        break;
      }
      case 13: {
        const uint32_t n = static_cast<uint32_t>(below(4));
        p.pack_map(n);
        for (uint32_t k = 0; k < n; ++k) {
          if (chance(80)) {
            p.pack(key());
          } else {
            value(p, 0);  // a non-string key
          }
          value(p, depth - 1);
        }
        break;
      }
    }
  }

  std::string value_bytes() {
    msgpack::sbuffer buf;
    Packer p(buf);
    value(p, 3);
    return std::string(buf.data(), buf.size());
  }

  std::string key() {
    static const char* keys[] = {"model",    "input_tokens", "output_tokens",
                                 "cost_usd", "temperature",  "k1",
                                 "k2",       "environment",  "id"};
    return keys[below(std::size(keys))];
  }

  std::string map_bytes() {
    Fields f;
    for (uint64_t k = below(4); k > 0; --k)
      f.push_back({key(), Raw(value_bytes())});
    return pack_map(f);
  }

 private:
  std::mt19937_64 rng_;
};

// A random trace: nested events of every type and kind, context split over
// several messages, feedback. Timestamps are coarse so that ties happen.
std::vector<StoredMessage> random_trace(Gen& g, std::vector<std::string>* raws) {
  static const char* types[] = {"MESSAGE", "TOOL",   "GENERATION", "AGENT",  "RETRIEVAL",
                                "ROUTER",  "SYSTEM", "CUSTOM",     "my-type"};
  const auto ts = [&] { return U(kT0 + g.below(20) * kMs); };
  const auto maybe = [&](Fields& f, const char* k, V v, int percent = 50) {
    if (g.chance(percent)) f.push_back({k, std::move(v)});
  };
  const size_t n = 1 + g.below(12);
  for (size_t k = 0; k < n; ++k) {
    const std::string id = "ev" + std::to_string(k);
    Fields common{{"id", S(id)}};
    if (k > 0 && g.chance(80)) {
      common.push_back({"parent_id", S(g.chance(90) ? "ev" + std::to_string(g.below(k)) : "nope")});
    }
    Fields start = common;
    start.push_back({"type", S(types[g.below(std::size(types))])});
    maybe(start, "name", S(g.str()));
    maybe(start, "input", Raw(g.value_bytes()));
    maybe(start, "ts", ts(), 90);
    maybe(start, "attrs", Raw(g.map_bytes()));
    Fields end{{"id", S(id)}};
    maybe(end, "output", Raw(g.value_bytes()));
    maybe(end, "ts", ts(), 90);
    maybe(end, "attrs", Raw(g.map_bytes()));
    maybe(end, "status", S(g.chance(70) ? "ok" : "error"));
    maybe(end, "error", S(g.str()), 30);
    switch (g.below(4)) {
      case 0: {  // one event message
        Fields ev = start;
        for (auto& f : end) {
          if (f.first != "id" && f.first != "ts" && f.first != "attrs") ev.push_back(f);
        }
        maybe(ev, g.chance(50) ? "latency_ms" : "end_ts", g.chance(50) ? U(g.below(5000)) : ts());
        raws->push_back(msg("event", ev));
        break;
      }
      case 1:  // start only: unfinished
        raws->push_back(msg("start", start));
        break;
      default:
        raws->push_back(msg("start", start));
        if (g.chance(30)) end.push_back({"latency_ms", U(g.below(100))});
        raws->push_back(msg("end", end));
    }
  }
  for (uint64_t k = g.below(4); k > 0; --k) {
    Fields t;
    maybe(t, "ts", ts(), 80);
    maybe(t, "conversation_id", S(g.str()));
    maybe(t, "session_id", S(g.str()));
    maybe(t, "interaction_id", S(g.str()));
    maybe(t, "channel_id", S(g.str()));
    maybe(t, "user", Raw(g.map_bytes()));
    maybe(t, "metadata", Raw(g.map_bytes()));
    raws->push_back(msg("trace", t));
  }
  for (uint64_t k = g.below(3); k > 0; --k) {
    Fields f;
    maybe(f, "ts", ts(), 80);
    maybe(f, "tag", S(g.str()));
    maybe(f, "text", S(g.str()));
    maybe(f, "score", g.chance(50) ? D(static_cast<double>(g.below(100)) / 10) : I(-1));
    maybe(f, "target_id", S("ev" + std::to_string(g.below(n + 1))));
    raws->push_back(msg("feedback", f));
  }
  std::vector<StoredMessage> out;
  for (size_t k = 0; k < raws->size(); ++k) {
    out.push_back(StoredMessage{k + 1, kT0 + g.below(20) * kMs, (*raws)[k]});
  }
  return out;
}

TEST(TraceBuildTraceProperty, AnyPermutationAndDuplicationGivesTheSameDocument) {
  size_t checked = 0;
  for (uint64_t seed = 1; seed <= 60; ++seed) {
    Gen g(seed);
    std::vector<std::string> raws;
    const std::vector<StoredMessage> base = random_trace(g, &raws);
    const BuildOptions options{.revision = static_cast<uint32_t>(1 + seed % 3),
                               .mark_unfinished = seed % 2 == 0,
                               .partial = seed % 5 == 0};
    const BuildResult want = build_trace(kTraceId, base, options);
    ASSERT_TRUE(json::accept(want.document)) << "seed " << seed << ": " << want.document;
    ASSERT_EQ(want.undecodable, 0u) << "seed " << seed;
    for (int round = 0; round < 25; ++round) {
      std::vector<StoredMessage> in = base;
      // duplicates arrive later (receive time not earlier) with new seqs
      for (uint64_t k = g.below(base.size() + 1); k > 0; --k) {
        StoredMessage dup = base[g.below(base.size())];
        dup.recv_ns += g.below(3) * kMs;
        in.push_back(dup);
      }
      std::shuffle(in.begin(), in.end(), g.rng());
      for (size_t k = 0; k < in.size(); ++k)
        in[k].seq = k + 1;
      const BuildResult got = build_trace(kTraceId, in, options);
      ASSERT_EQ(got.document, want.document) << "seed " << seed << " round " << round;
      ASSERT_EQ(got.events, want.events);
      ASSERT_EQ(got.complete, want.complete);
      ASSERT_EQ(got.unfinished, want.unfinished);
      ASSERT_EQ(got.orphans, want.orphans);
      ++checked;
    }
  }
  EXPECT_EQ(checked, 60u * 25u);
}

// With changed_after_seq set, the flags depend only on which distinct
// messages have a copy at or below it: any order of the messages and any
// later duplicates give the same document, and an event is changed exactly
// when one of its messages has no old copy.
TEST(TraceBuildTraceProperty, ChangedFlagsDependOnlyOnWhichMessagesAreOld) {
  constexpr uint64_t kOld = 1000;  // seqs up to this were folded before
  for (uint64_t seed = 1; seed <= 40; ++seed) {
    Gen g(seed);
    std::vector<std::string> raws;
    std::vector<StoredMessage> base = random_trace(g, &raws);
    std::vector<bool> old(base.size());
    for (size_t k = 0; k < base.size(); ++k) {
      old[k] = g.chance(50);
      base[k].seq = old[k] ? 1 + g.below(kOld) : kOld + 1 + g.below(kOld);
    }
    BuildOptions options{.revision = 2};
    options.changed_after_seq = kOld;
    const BuildResult want = build_trace(kTraceId, base, options);
    const json doc = json::parse(want.document);
    // A message is old when some copy of its bytes is; an event is changed
    // when one of its messages is not.
    std::map<std::string_view, bool> bytes_old;
    for (size_t k = 0; k < base.size(); ++k)
      bytes_old[raws[k]] = bytes_old[raws[k]] || old[k];
    std::map<std::string, bool> expect;
    bool trace_new = false;
    for (const auto& [raw, is_old] : bytes_old) {
      ipc::Event ev;
      ipc::Reject reason{};
      std::string detail;
      ASSERT_TRUE(ipc::decode_event(raw, ipc::DecodeLimits{}, &ev, &reason, &detail)) << detail;
      if (ev.kind == ipc::Kind::kTrace) trace_new = trace_new || !is_old;
      if (ev.kind == ipc::Kind::kTrace || ev.kind == ipc::Kind::kFeedback) continue;
      expect[ev.id] = expect[ev.id] || !is_old;
    }
    EXPECT_EQ(doc["trace_changed"], trace_new) << "seed " << seed;
    size_t changed = 0;
    for (const auto& [id, c] : expect) {
      const json* e = find_event(doc["events"], id);
      ASSERT_NE(e, nullptr) << id;
      EXPECT_EQ(e->at("changed"), c) << "seed " << seed << " event " << id;
      changed += c ? 1 : 0;
    }
    EXPECT_EQ(want.changed, changed);
    for (int round = 0; round < 10; ++round) {
      std::vector<StoredMessage> in = base;
      // duplicates stored later: new seqs above kOld
      for (uint64_t k = g.below(base.size() + 1); k > 0; --k) {
        StoredMessage dup = base[g.below(base.size())];
        dup.seq = 3 * kOld + in.size();
        in.push_back(dup);
      }
      std::shuffle(in.begin(), in.end(), g.rng());
      ASSERT_EQ(build_trace(kTraceId, in, options).document, want.document)
          << "seed " << seed << " round " << round;
    }
  }
}

}  // namespace
}  // namespace sidetrace::trace

#include "agent/viewer.h"

#include <gtest/gtest.h>

#include <atomic>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

namespace sidetrace::agent {
namespace {

using json = nlohmann::json;

json event(const std::string& id, const std::string& type, const std::string& name,
           json input = nullptr, json output = nullptr, const std::string& status = "ok",
           json children = json::array()) {
  return json{{"id", id},
              {"parent_id", nullptr},
              {"type", type},
              {"name", name},
              {"input", std::move(input)},
              {"output", std::move(output)},
              {"start_ts", 1700000000000000000ull},
              {"end_ts", 1700000000500000000ull},
              {"duration_ms", 500.0},
              {"status", status},
              {"error", status == "error" ? json("boom") : json(nullptr)},
              {"attrs", json::object()},
              {"orphan", false},
              {"unfinished", false},
              {"changed", true},
              {"children", std::move(children)}};
}

// A trace document in the shape docs/trace-document.md describes.
std::string doc(const std::string& trace_id, uint32_t revision, json events = json::array(),
                const std::string& session = "", const std::string& conversation = "",
                const std::string& user = "", json feedback = json::array()) {
  bool error = false;
  std::vector<const json*> stack;
  for (const auto& e : events)
    stack.push_back(&e);
  while (!stack.empty()) {
    const json* e = stack.back();
    stack.pop_back();
    if ((*e)["status"] == "error") error = true;
    for (const auto& c : (*e)["children"])
      stack.push_back(&c);
  }
  json d = {{"trace_id", trace_id},
            {"revision", revision},
            {"conversation_id", conversation.empty() ? json(nullptr) : json(conversation)},
            {"session_id", session.empty() ? json(nullptr) : json(session)},
            {"interaction_id", nullptr},
            {"channel_id", nullptr},
            {"user", user.empty() ? json::object() : json{{"id", user}}},
            {"metadata", json::object()},
            {"start_ts", 1700000000000000000ull},
            {"end_ts", 1700000000500000000ull},
            {"duration_ms", 500.0},
            {"status", error ? "error" : "ok"},
            {"partial", false},
            {"trace_changed", true},
            {"events", std::move(events)},
            {"feedback", std::move(feedback)}};
  return d.dump();
}

std::vector<std::string> ids(const TraceList& l) {
  std::vector<std::string> out;
  for (const auto& s : l.traces)
    out.push_back(s.trace_id);
  return out;
}

TEST(RecentTraces, SummaryFieldsAreParsedAtAdd) {
  RecentTraces r;
  json tree =
      json::array({event("a", "AGENT", "answer", "What is 2+2?", "4", "ok",
                         json::array({event("g", "GENERATION", "llm", nullptr, nullptr, "error"),
                                      event("t", "TOOL", "calc")}))});
  json fb = json::array({json{{"tag", "thumbs"}, {"score", 1}}, json{{"tag", "note"}}});
  ASSERT_TRUE(r.add("t1", 1, doc("t1", 1, tree, "s1", "c1", "u1", fb)));
  auto l = r.list({});
  ASSERT_EQ(l.traces.size(), 1u);
  const TraceSummary& s = l.traces[0];
  EXPECT_EQ(s.trace_id, "t1");
  EXPECT_EQ(s.revision, 1u);
  EXPECT_EQ(s.seq, 1u);
  EXPECT_EQ(s.start_ts, 1700000000000000000ull);
  EXPECT_EQ(s.duration_ms, 500.0);
  EXPECT_EQ(s.status, "error");
  EXPECT_EQ(s.session_id, "s1");
  EXPECT_EQ(s.conversation_id, "c1");
  EXPECT_EQ(s.user_id, "u1");
  EXPECT_EQ(s.root_type, "AGENT");
  EXPECT_EQ(s.root_name, "answer");
  EXPECT_EQ(s.input_preview, "What is 2+2?");
  EXPECT_EQ(s.events, 3u);
  EXPECT_EQ(s.errors, 1u);
  EXPECT_EQ(s.feedback, 2u);
  EXPECT_EQ(l.last_seq, 1u);
}

TEST(RecentTraces, InputPreviewIsCutAtACharacterBoundary) {
  RecentTraces r;
  std::string input;
  while (input.size() < 400)
    input += "\xC3\xA9";  // é, two bytes
  ASSERT_TRUE(r.add("t", 1, doc("t", 1, json::array({event("a", "AGENT", "x", input)}))));
  std::string p = r.list({}).traces[0].input_preview;
  EXPECT_LE(p.size(), TraceSummary::kPreviewBytes + 3);
  ASSERT_TRUE(p.ends_with("\xE2\x80\xA6"));
  std::string body = p.substr(0, p.size() - 3);
  EXPECT_EQ(body.size() % 2, 0u);  // no half character
  // Structured input is previewed as compact JSON.
  ASSERT_TRUE(r.add("u", 1, doc("u", 1, json::array({event("a", "AGENT", "x", json{{"k", 1}})}))));
  EXPECT_EQ(r.list({}).traces[0].input_preview, "{\"k\":1}");
}

TEST(RecentTraces, KeepsOnlyTheLatestRevisionAndMovesItToTheFront) {
  RecentTraces r;
  ASSERT_TRUE(r.add("a", 1, doc("a", 1)));
  ASSERT_TRUE(r.add("b", 1, doc("b", 1)));
  ASSERT_TRUE(r.add("a", 2, doc("a", 2, {}, "s-new")));
  EXPECT_FALSE(r.add("a", 1, doc("a", 1)));  // older: ignored
  EXPECT_FALSE(r.add("a", 2, doc("a", 2)));  // same: ignored
  auto l = r.list({});
  EXPECT_EQ(ids(l), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(l.traces[0].revision, 2u);
  EXPECT_EQ(l.traces[0].seq, 3u);
  EXPECT_EQ(l.traces[0].session_id, "s-new");
  EXPECT_EQ(json::parse(*r.get("a"))["revision"], 2);
  auto st = r.stats();
  EXPECT_EQ(st.traces, 2u);
  EXPECT_EQ(st.added, 3u);
  EXPECT_EQ(st.stale, 2u);
}

TEST(RecentTraces, CountBoundEvictsTheOldest) {
  RecentTraces r({.max_traces = 3, .max_bytes = 1 << 20});
  for (int i = 0; i < 5; ++i) {
    std::string id = "t" + std::to_string(i);
    ASSERT_TRUE(r.add(id, 1, doc(id, 1)));
  }
  EXPECT_EQ(ids(r.list({})), (std::vector<std::string>{"t4", "t3", "t2"}));
  EXPECT_EQ(r.get("t0"), nullptr);
  EXPECT_NE(r.get("t2"), nullptr);
  EXPECT_EQ(r.stats().evicted, 2u);
  EXPECT_EQ(r.stats().traces, 3u);
}

TEST(RecentTraces, ByteBoundEvictsTheOldestAndRejectsOversizedDocuments) {
  std::string big(3000, 'x');
  auto big_doc = [&](const std::string& id) {
    return doc(id, 1, json::array({event("a", "AGENT", "x", big)}));
  };
  // Each entry holds the document plus its search text: about 2 x 3.5 KB.
  RecentTraces r({.max_traces = 1000, .max_bytes = 20000});
  for (int i = 0; i < 6; ++i) {
    std::string id = "t" + std::to_string(i);
    ASSERT_TRUE(r.add(id, 1, big_doc(id)));
    EXPECT_LE(r.stats().bytes, 20000u);
  }
  auto st = r.stats();
  EXPECT_GE(st.traces, 1u);
  EXPECT_LT(st.traces, 6u);
  EXPECT_EQ(st.evicted, 6u - st.traces);
  EXPECT_EQ(r.list({}).traces.front().trace_id, "t5");

  RecentTraces tiny({.max_traces = 10, .max_bytes = 1000});
  EXPECT_FALSE(tiny.add("huge", 1, big_doc("huge")));
  EXPECT_EQ(tiny.stats().rejected, 1u);
  EXPECT_EQ(tiny.stats().traces, 0u);
}

TEST(RecentTraces, MalformedDocumentsAreRejectedAndCounted) {
  RecentTraces r;
  EXPECT_FALSE(r.add("t", 1, "{not json"));
  EXPECT_FALSE(r.add("t", 1, "[1,2]"));
  EXPECT_FALSE(r.add("t", 1, std::shared_ptr<const std::string>()));
  EXPECT_EQ(r.stats().rejected, 3u);
  EXPECT_TRUE(r.list({}).traces.empty());
  EXPECT_EQ(r.list({}).last_seq, 0u);
}

// A shared document is kept as it is, not copied: the outbox holds the same
// text until delivery reads it.
TEST(RecentTraces, KeepsASharedDocumentWithoutACopy) {
  RecentTraces r;
  auto doc = std::make_shared<const std::string>(R"({"trace_id":"t","events":[]})");
  ASSERT_TRUE(r.add("t", 1, doc));
  EXPECT_EQ(r.get("t").get(), doc.get());
  EXPECT_EQ(*r.get("t"), *doc);
}

// add() does not parse (it runs on the assembler's thread); a document within
// braces that is not JSON is dropped, and counted, when first listed.
TEST(RecentTraces, BracedNonJsonIsDroppedWhenListed) {
  RecentTraces r;
  ASSERT_TRUE(r.add("bad", 1, "{\"events\": [}"));
  ASSERT_TRUE(r.add("good", 1, doc("good", 1)));
  EXPECT_EQ(r.stats().traces, 2u);
  TraceList l = r.list({});
  ASSERT_EQ(l.traces.size(), 1u);
  EXPECT_EQ(l.traces[0].trace_id, "good");
  EXPECT_EQ(r.stats().rejected, 1u);
  EXPECT_EQ(r.stats().traces, 1u);
  EXPECT_EQ(r.get("bad"), nullptr);
  // Summaries are kept: a second listing parses nothing again.
  EXPECT_EQ(r.list({}).traces.size(), 1u);
  EXPECT_EQ(r.stats().rejected, 1u);
}

TEST(RecentTraces, SinceReturnsOnlyNewerEntries) {
  RecentTraces r;
  ASSERT_TRUE(r.add("a", 1, doc("a", 1)));
  ASSERT_TRUE(r.add("b", 1, doc("b", 1)));
  TraceQuery q;
  q.since = r.list({}).last_seq;
  EXPECT_TRUE(r.list(q).traces.empty());
  ASSERT_TRUE(r.add("c", 1, doc("c", 1)));
  ASSERT_TRUE(r.add("a", 2, doc("a", 2)));  // a new revision counts as new
  auto l = r.list(q);
  EXPECT_EQ(ids(l), (std::vector<std::string>{"a", "c"}));
  EXPECT_EQ(l.last_seq, 4u);
}

TEST(RecentTraces, LimitCutsTheListAndSaysSo) {
  RecentTraces r;
  for (int i = 0; i < 5; ++i) {
    std::string id = "t" + std::to_string(i);
    ASSERT_TRUE(r.add(id, 1, doc(id, 1)));
  }
  TraceQuery q;
  q.limit = 2;
  auto l = r.list(q);
  EXPECT_EQ(ids(l), (std::vector<std::string>{"t4", "t3"}));
  EXPECT_TRUE(l.more);
  q.limit = 5;
  EXPECT_FALSE(r.list(q).more);
}

TEST(RecentTraces, ConcurrentAddAndListStayConsistent) {
  RecentTraces r({.max_traces = 50, .max_bytes = 1 << 20});
  std::atomic<bool> done{false};
  std::thread writer([&] {
    for (int i = 0; i < 2000; ++i) {
      std::string id = "t" + std::to_string(i % 80);
      r.add(id, static_cast<uint32_t>(i / 80 + 1), doc(id, static_cast<uint32_t>(i / 80 + 1)));
    }
    done = true;
  });
  uint64_t since = 0;
  while (!done.load()) {
    TraceQuery q;
    q.since = since;
    q.limit = 1000;
    auto l = r.list(q);
    EXPECT_LE(l.traces.size(), 50u);
    for (size_t i = 1; i < l.traces.size(); ++i)
      EXPECT_GT(l.traces[i - 1].seq, l.traces[i].seq);
    for (const auto& s : l.traces)
      EXPECT_GT(s.seq, since);
    since = l.last_seq;
  }
  writer.join();
  EXPECT_EQ(r.stats().traces, 50u);
}

class ViewerRoutes : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(r_.add("trace-1", 1,
                       doc("trace-1", 1,
                           json::array({event("a", "AGENT", "Weather bot",
                                              "what's the weather in Paris", "sunny")}),
                           "sess-1", "conv-1", "alice")));
    ASSERT_TRUE(r_.add(
        "trace-2", 1,
        doc("trace-2", 1,
            json::array({event("a", "AGENT", "answer", "hi", nullptr, "ok",
                               json::array({event("t", "TOOL", "search_web",
                                                  json{{"query", "Zebra"}}, nullptr, "error")}))}),
            "sess-1", "conv-2", "bob")));
    ASSERT_TRUE(r_.add("trace-3", 1,
                       doc("trace-3", 1, json::array({event("a", "MESSAGE", "greet", "hello")}),
                           "sess-2", "conv-3", "alice")));
  }

  AdminResponse get(const std::string& target, const std::string& method = "GET") {
    AdminResponse out;
    EXPECT_TRUE(handle_viewer(r_, method, target, &out)) << target;
    return out;
  }

  std::vector<std::string> list(const std::string& query) {
    AdminResponse res = get("/api/traces" + query);
    EXPECT_EQ(res.status, 200u) << res.body;
    EXPECT_EQ(res.content_type, "application/json");
    json body = json::parse(res.body);
    std::vector<std::string> out;
    for (const auto& t : body["traces"])
      out.push_back(t["trace_id"]);
    return out;
  }

  RecentTraces r_;
};

TEST_F(ViewerRoutes, ListIsNewestFirstWithSummaries) {
  AdminResponse res = get("/api/traces");
  json body = json::parse(res.body);
  EXPECT_EQ(body["last_seq"], 3);
  EXPECT_EQ(body["more"], false);
  ASSERT_EQ(body["traces"].size(), 3u);
  EXPECT_EQ(body["traces"][0]["trace_id"], "trace-3");
  const json& t2 = body["traces"][1];
  EXPECT_EQ(t2["status"], "error");
  EXPECT_EQ(t2["errors"], 1);
  EXPECT_EQ(t2["events"], 2);
  EXPECT_EQ(t2["user_id"], "bob");
  EXPECT_EQ(t2["root_name"], "answer");
  EXPECT_EQ(t2["start_ts"], 1700000000000000000ull);
}

TEST_F(ViewerRoutes, FiltersAndSearch) {
  using V = std::vector<std::string>;
  EXPECT_EQ(list("?session=sess-1"), (V{"trace-2", "trace-1"}));
  EXPECT_EQ(list("?conversation=conv-3"), (V{"trace-3"}));
  EXPECT_EQ(list("?user=alice"), (V{"trace-3", "trace-1"}));
  EXPECT_EQ(list("?errors=1"), (V{"trace-2"}));
  EXPECT_EQ(list("?user=alice&session=sess-1"), (V{"trace-1"}));
  // q: ids, context fields, names, inputs, outputs; case-insensitive.
  EXPECT_EQ(list("?q=TRACE-3"), (V{"trace-3"}));
  EXPECT_EQ(list("?q=conv-2"), (V{"trace-2"}));
  EXPECT_EQ(list("?q=weather+in+paris"), (V{"trace-1"}));  // '+' is a space
  EXPECT_EQ(list("?q=zebra"), (V{"trace-2"}));             // inside a structured input
  EXPECT_EQ(list("?q=SUNNY"), (V{"trace-1"}));             // an output
  EXPECT_EQ(list("?q=search_web"), (V{"trace-2"}));        // a nested event's name
  EXPECT_EQ(list("?q=boom"), (V{"trace-2"}));              // an error text
  EXPECT_EQ(list("?q=%27s%20the"), (V{"trace-1"}));        // percent-decoded
  EXPECT_EQ(list("?q=nowhere"), V{});
  EXPECT_EQ(list("?limit=1"), (V{"trace-3"}));
  EXPECT_EQ(list("?since=2"), (V{"trace-3"}));
  EXPECT_EQ(list("?unknown=1"), (V{"trace-3", "trace-2", "trace-1"}));
}

TEST_F(ViewerRoutes, BadParametersAnswer400) {
  for (const char* t : {"/api/traces?limit=x", "/api/traces?since=-1", "/api/traces?q=%zz",
                        "/api/traces?since=1e3"}) {
    AdminResponse res = get(t);
    EXPECT_EQ(res.status, 400u) << t;
    EXPECT_TRUE(json::parse(res.body).contains("error")) << t;
  }
}

TEST_F(ViewerRoutes, OneTraceIsTheFullDocumentOr404) {
  AdminResponse res = get("/api/traces/trace-2");
  EXPECT_EQ(res.status, 200u);
  EXPECT_EQ(res.content_type, "application/json");
  EXPECT_EQ(res.body, *r_.get("trace-2"));
  EXPECT_EQ(json::parse(res.body)["events"][0]["children"][0]["name"], "search_web");
  EXPECT_EQ(get("/api/traces/nope").status, 404u);
  EXPECT_EQ(get("/api/traces/trace%2D2").status, 200u);  // percent-decoded id
}

TEST_F(ViewerRoutes, OtherMethodsAnswer405AndOtherPathsAreNotOurs) {
  EXPECT_EQ(get("/api/traces", "POST").status, 405u);
  EXPECT_EQ(get("/ui", "POST").status, 405u);
  AdminResponse out;
  out.body = "untouched";
  for (const char* t : {"/metrics", "/", "/api/tracesX", "/api/traces/", "/uix"}) {
    EXPECT_FALSE(handle_viewer(r_, "GET", t, &out)) << t;
  }
  EXPECT_EQ(out.body, "untouched");
}

TEST_F(ViewerRoutes, ThePageIsSelfContainedHtml) {
  AdminResponse res = get("/ui");
  EXPECT_EQ(res.status, 200u);
  EXPECT_EQ(res.content_type, "text/html; charset=utf-8");
  EXPECT_TRUE(res.body.starts_with("<!doctype html>"));
  EXPECT_NE(res.body.find("id=\"trace-list\""), std::string::npos);
  EXPECT_NE(res.body.find("id=\"trace-tree\""), std::string::npos);
  EXPECT_NE(res.body.find("id=\"waterfall\""), std::string::npos);
  EXPECT_NE(res.body.find("id=\"feedback\""), std::string::npos);
  // No external assets: no absolute URL anywhere, no protocol-relative
  // src/href, and data never goes through HTML parsing.
  EXPECT_EQ(res.body.find("http://"), std::string::npos);
  EXPECT_EQ(res.body.find("https://"), std::string::npos);
  EXPECT_FALSE(std::regex_search(res.body, std::regex(R"((src|href)\s*=\s*["']?//)")));
  EXPECT_EQ(res.body.find("innerHTML"), std::string::npos);
  EXPECT_EQ(res.body.find("outerHTML"), std::string::npos);
  EXPECT_EQ(res.body.find("insertAdjacentHTML"), std::string::npos);
  EXPECT_EQ(res.body.find("document.write"), std::string::npos);
  EXPECT_EQ(get("/ui/").body, res.body);
}

TEST(UrlDecode, DecodesAndRejectsMalformedEscapes) {
  std::string out;
  EXPECT_TRUE(url_decode("a%20b+c%2Fd", &out));
  EXPECT_EQ(out, "a b c/d");
  EXPECT_FALSE(url_decode("%2", &out));
  EXPECT_FALSE(url_decode("%", &out));
  EXPECT_FALSE(url_decode("%g0", &out));
}

}  // namespace
}  // namespace sidetrace::agent

#include "upstream/detail/otlp.h"

#include <fmt/format.h>
#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>
#include <deque>
#include <nlohmann/json.hpp>
#include <optional>
#include <unordered_set>
#include <vector>

#include "common/text.h"
#include "otlp/proto/status.pb.h"
#include "otlp/proto/trace_service.pb.h"
#include "upstream/detail/json_dom.h"

namespace sidetrace::upstream::detail {

namespace {

using nlohmann::json;
using Dom = JsonDom;
using Idx = JsonDom::Index;
constexpr Idx kNone = JsonDom::kNone;

// A string kept for the request being built: unescaped text, and the keys
// and ids made from the documents. Strings keep their capacity from batch to
// batch (up to kKeepCapacity each), so a steady load allocates nothing here.
class StringPool {
 public:
  static constexpr size_t kKeepCapacity = 64 << 10;

  void reset() {
    for (size_t i = 0; i < used_; ++i) {
      if (strings_[i].capacity() > kKeepCapacity) std::string().swap(strings_[i]);
    }
    used_ = 0;
  }
  // An empty string, valid (with its address) until reset().
  std::string& next() {
    if (used_ == strings_.size()) strings_.emplace_back();
    std::string& s = strings_[used_++];
    s.clear();
    return s;
  }
  // Returns the string next() gave last, unused.
  void give_back() { --used_; }

 private:
  std::deque<std::string> strings_;  // a deque: their addresses never move
  size_t used_ = 0;
};

// ---- the request, as the documents give it ----------------------------------
//
// The documents of a batch are read one after another into this model (the
// tree of each is gone once the next is read); the model holds views into
// the documents' text and into the pool, and is then written out in either
// encoding.

struct Range {
  uint32_t begin = 0, end = 0;
};

struct Value {
  // kArray: an OTLP ArrayValue of the scalars State::items[items].
  enum class Kind : uint8_t { kString, kBool, kInt, kDouble, kArray };
  Kind kind = Kind::kString;
  bool b = false;
  int64_t i = 0;
  double d = 0;
  std::string_view s;
  Range items;
};

struct Attr {
  std::string_view key;
  Value value;
};

// A `feedback` span event.
struct FeedbackEvent {
  uint64_t time = 0;
  Range attrs;
};

struct Span {
  std::array<char, 16> trace_id{};
  std::array<char, 8> span_id{};
  std::array<char, 8> parent_id{};
  bool has_parent = false;
  std::string_view name;
  int kind = 0;  // opentelemetry.proto.trace.v1.Span.SpanKind
  uint64_t start = 0, end = 0;
  Range attrs;          // its own attributes
  Range annotations;    // annotation.<tag>.score/text from its feedback
  Range events;         // its feedback events
  int status_code = 0;  // opentelemetry.proto.trace.v1.Status.StatusCode
  std::string_view status_message;
  size_t size = 0;  // encoded size, by the protobuf writer's sizing pass
};

struct Resource {
  Range attrs;
  Range spans;
  size_t scope_spans_size = 0, size = 0;  // by the sizing pass
};

const char* openinference_kind(std::string_view type) {
  if (type == "TOOL") return "TOOL";
  if (type == "GENERATION") return "LLM";
  if (type == "AGENT") return "AGENT";
  if (type == "RETRIEVAL") return "RETRIEVER";
  return "CHAIN";  // MESSAGE, ROUTER and everything else
}

const char* genai_operation(std::string_view type) {
  if (type == "GENERATION") return "chat";
  if (type == "TOOL") return "execute_tool";
  if (type == "AGENT") return "invoke_agent";
  if (type == "RETRIEVAL") return "retrieval";
  return nullptr;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The bytes of otlp_id(id, 2 * N), without making its hex text.
template <size_t N>
void id_bytes(std::string_view id, std::array<char, N>* out) {
  bool hex = id.size() == 2 * N;
  bool nonzero = false;
  for (size_t k = 0; hex && k < N; ++k) {
    const int hi = hex_digit(id[2 * k]), lo = hex_digit(id[2 * k + 1]);
    if (hi < 0 || lo < 0) {
      hex = false;
      break;
    }
    (*out)[k] = static_cast<char>(hi << 4 | lo);
    nonzero = nonzero || hi != 0 || lo != 0;
  }
  if (hex && nonzero) return;
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  EVP_Digest(id.data(), id.size(), md, &md_len, EVP_sha256(), nullptr);
  std::memcpy(out->data(), md, N);
}

}  // namespace

// ---- OtlpEncoder: reading documents into the model ---------------------------

struct OtlpEncoder::State {
  JsonDom dom;  // the document being read
  StringPool pool;
  std::vector<Attr> attrs;
  std::vector<Value> items;  // the elements of array values
  std::vector<Span> spans;
  std::vector<FeedbackEvent> events;
  std::vector<Resource> resources;  // none or one: the document's
  std::string out;                  // the document's encoded ResourceSpans

  // Per document, reused.
  struct Trace {
    std::array<char, 16> trace_id{};
    std::string_view conversation_id, session_id, user_id, metadata;
    Idx revision = kNone;
  } trace;
  std::vector<std::pair<uint32_t, Idx>> feedback;  // (span, feedback item)
  std::unordered_set<std::string_view> wanted, all;
  std::vector<std::pair<std::string_view, uint32_t>> index;  // event id -> span
  struct Frame {
    Idx list = kNone;
    Idx next = kNone;
    bool has_id = false;       // false for the root events' list
    std::array<char, 8> id{};  // the span id of the event whose children `list` holds
  };
  std::vector<Frame> stack;

  // ---- strings and values of the document being read ----

  // A string's value ("" for absent values and other types), kept until
  // the request is written.
  std::string_view str(Idx i) {
    if (i == kNone || dom.type(i) != Dom::Type::kString) return {};
    std::string& slot = pool.next();
    std::string_view v = dom.string(i, &slot);
    if (v.data() != slot.data()) pool.give_back();  // no escapes: a view of the document
    return v;
  }
  std::string_view str(Idx obj, std::string_view key) { return str(dom.find(obj, key)); }
  std::string_view key_of(Idx member) {
    std::string& slot = pool.next();
    std::string_view k = dom.key(member, &slot);
    if (k.data() != slot.data()) pool.give_back();
    return k;
  }
  // A value as text: strings verbatim, everything else as its JSON text.
  std::string_view text(Idx i) { return dom.type(i) == Dom::Type::kString ? str(i) : dom.text(i); }
  uint64_t u64_or(Idx obj, std::string_view key, uint64_t dflt) const {
    const Idx i = dom.find(obj, key);
    if (i == kNone || dom.type(i) != Dom::Type::kNumber) return dflt;
    if (auto u = dom.uint64(i)) return *u;
    if (dom.int64(i)) return 0;  // negative
    return static_cast<uint64_t>(std::max(0.0, dom.number(i)));
  }
  bool flag_or(Idx obj, std::string_view key, bool dflt) const {
    const Idx i = dom.find(obj, key);
    return i != kNone && dom.type(i) == Dom::Type::kBool ? dom.boolean(i) : dflt;
  }
  std::string_view concat(std::string_view a, std::string_view b, std::string_view c = {}) {
    std::string& s = pool.next();
    s.reserve(a.size() + b.size() + c.size());
    s.append(a).append(b).append(c);
    return s;
  }

  // The OTLP AnyValue of a JSON value; false for null and absent values
  // (the attribute is then omitted).
  bool value_of(Idx v, Value* out) {
    if (v == kNone) return false;
    switch (dom.type(v)) {
      case Dom::Type::kNull:
        return false;
      case Dom::Type::kString:
        *out = Value{Value::Kind::kString, false, 0, 0, str(v)};
        return true;
      case Dom::Type::kBool:
        *out = Value{Value::Kind::kBool, dom.boolean(v), 0, 0, {}};
        return true;
      case Dom::Type::kNumber:
        if (auto i = dom.int64(v)) {
          *out = Value{Value::Kind::kInt, false, *i, 0, {}};
        } else if (dom.uint64(v)) {
          // int64 is OTLP's only integer: a larger value keeps its digits as text.
          *out = Value{Value::Kind::kString, false, 0, 0, dom.text(v)};
        } else {
          *out = Value{Value::Kind::kDouble, false, 0, dom.number(v), {}};
        }
        return true;
      case Dom::Type::kArray: {
        // An array of scalars is an OTLP array, as OpenTelemetry's attribute
        // arrays are; others are written as JSON text.
        bool scalars = true;
        for (Idx c = dom.first_child(v); c != kNone && scalars; c = dom.next(v, c)) {
          const Dom::Type t = dom.type(c);
          scalars = t == Dom::Type::kString || t == Dom::Type::kBool || t == Dom::Type::kNumber;
        }
        if (scalars) {
          Value array{Value::Kind::kArray, false, 0, 0, {}, {}};
          array.items.begin = static_cast<uint32_t>(items.size());
          for (Idx c = dom.first_child(v); c != kNone; c = dom.next(v, c)) {
            Value item;
            value_of(c, &item);  // a scalar: never an array, never omitted
            items.push_back(item);
          }
          array.items.end = static_cast<uint32_t>(items.size());
          *out = array;
          return true;
        }
        *out = Value{Value::Kind::kString, false, 0, 0, dom.text(v), {}};
        return true;
      }
      case Dom::Type::kObject:  // as JSON text
        *out = Value{Value::Kind::kString, false, 0, 0, dom.text(v), {}};
        return true;
    }
    return false;
  }

  // ---- attributes ----

  uint32_t mark() const { return static_cast<uint32_t>(attrs.size()); }
  void add(std::string_view key, Idx v) {
    Value value;
    if (value_of(v, &value)) attrs.push_back(Attr{key, value});
  }
  void add_str(std::string_view key, std::string_view v) {
    if (!v.empty()) attrs.push_back(Attr{key, Value{Value::Kind::kString, false, 0, 0, v, {}}});
  }
  void add_true(std::string_view key) {
    attrs.push_back(Attr{key, Value{Value::Kind::kBool, true, 0, 0, {}, {}}});
  }
  // Sets `key` to `v` (nothing for null), replacing an attribute of that key
  // added since `from`.
  void set(uint32_t from, std::string_view key, Idx v) {
    Value value;
    if (!value_of(v, &value)) return;
    for (uint32_t a = from; a < attrs.size(); ++a) {
      if (attrs[a].key == key) {
        attrs[a].value = value;
        return;
      }
    }
    attrs.push_back(Attr{key, value});
  }

  // ---- events and spans ----

  // Calls fn(event, parent span id or null, &own span id) for every event
  // object under `events`, depth-first, without recursion (a chain of any
  // length costs no stack). fn sets the own span id its children get.
  template <typename Fn>
  void each_event(Idx events, Fn&& fn) {
    stack.clear();
    if (dom.is_null(events) || dom.type(events) != Dom::Type::kArray) return;
    stack.push_back(Frame{events, dom.first_child(events), false, {}});
    while (!stack.empty()) {
      Frame& f = stack.back();
      if (f.next == kNone) {
        stack.pop_back();
        continue;
      }
      const Idx e = f.next;
      f.next = dom.next(f.list, e);
      if (dom.type(e) != Dom::Type::kObject) continue;
      Frame child;
      child.list = dom.find(e, "children");
      child.has_id = true;
      fn(e, f.has_id ? &f.id : nullptr, &child.id);  // pushes nothing: f stays valid
      if (child.list != kNone && dom.type(child.list) == Dom::Type::kArray) {
        child.next = dom.first_child(child.list);
        stack.push_back(child);
      }
    }
  }

  void add_span(Idx e, std::string_view id, const std::array<char, 8>& span_id,
                const std::array<char, 8>* parent) {
    std::string_view type = str(e, "type");
    std::string_view name = str(e, "name");
    Span& s = spans.emplace_back();
    s.trace_id = trace.trace_id;
    s.span_id = span_id;
    if (parent != nullptr) {
      s.parent_id = *parent;
      s.has_parent = true;
    }
    s.name = !name.empty() ? name : !type.empty() ? type : std::string_view("event");
    s.kind = type == "GENERATION" || type == "RETRIEVAL" ? 3 : 1;  // CLIENT : INTERNAL
    s.start = u64_or(e, "start_ts", 0);
    s.end = u64_or(e, "end_ts", s.start);
    s.attrs.begin = mark();
    add_str("openinference.span.kind", openinference_kind(type));
    if (const char* op = genai_operation(type)) add_str("gen_ai.operation.name", op);
    add_str("sidetrace.event.id", id);
    add_str("sidetrace.event.type", type);
    add("sidetrace.trace.revision", trace.revision);
    add_str("gen_ai.conversation.id", trace.conversation_id);
    add_str("session.id", trace.session_id);
    add_str("user.id", trace.user_id);
    add_str("metadata", trace.metadata);
    static constexpr std::string_view kIo[2][3] = {{"input", "input.value", "input.mime_type"},
                                                   {"output", "output.value", "output.mime_type"}};
    for (const auto& io : kIo) {
      const Idx v = dom.find(e, io[0]);
      if (dom.is_null(v)) continue;
      add_str(io[1], text(v));
      add_str(io[2], dom.type(v) == Dom::Type::kString ? "text/plain" : "application/json");
    }
    const bool unfinished = flag_or(e, "unfinished", false);
    if (flag_or(e, "orphan", false)) add_true("sidetrace.orphan");
    if (unfinished) add_true("sidetrace.unfinished");
    // A key with a dot is an OpenTelemetry name (such as the attributes of
    // spans taken in over OTLP): it goes out as it is, over an attribute of
    // that name derived above. Keys without a dot are the event's own.
    const Idx at = dom.find(e, "attrs");
    if (at != kNone && dom.type(at) == Dom::Type::kObject) {
      const uint32_t from = s.attrs.begin;
      for (Idx m = dom.first_child(at); m != kNone; m = dom.next(at, m)) {
        std::string_view k = key_of(m);
        if (k == "model") {
          set(from, "gen_ai.request.model", m);
          set(from, "llm.model_name", m);
        } else if (k == "input_tokens") {
          set(from, "gen_ai.usage.input_tokens", m);
          set(from, "llm.token_count.prompt", m);
        } else if (k == "output_tokens") {
          set(from, "gen_ai.usage.output_tokens", m);
          set(from, "llm.token_count.completion", m);
        } else if (k == "temperature") {
          set(from, "gen_ai.request.temperature", m);
        } else if (k.find('.') != std::string_view::npos) {
          set(from, k, m);
        } else if (!dom.is_null(m)) {
          set(from, concat("sidetrace.attr.", k), m);
        }
      }
    }
    s.attrs.end = mark();
    if (unfinished) {
      s.status_code = 0;  // UNSET
    } else if (str(e, "status") == "error") {
      s.status_code = 2;  // ERROR
      s.status_message = str(e, "error");
    } else {
      s.status_code = 1;  // OK
    }
  }

  // The span built for event `id` in the current document, or UINT32_MAX.
  uint32_t span_of(std::string_view id) const {
    for (const auto& [eid, pos] : index) {
      if (eid == id) return pos;
    }
    return UINT32_MAX;
  }

  // The feedback of the current document that lands on its spans: for each
  // span (in span order), its feedback events in document order and its
  // annotation attributes, where the latest feedback per tag wins (a key
  // keeps the position of its first appearance).
  void add_feedback() {
    std::stable_sort(feedback.begin(), feedback.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    for (size_t g = 0; g < feedback.size();) {
      const uint32_t span = feedback[g].first;
      size_t end = g;
      while (end < feedback.size() && feedback[end].first == span)
        ++end;
      Span& s = spans[span];
      s.events.begin = static_cast<uint32_t>(events.size());
      for (size_t k = g; k < end; ++k) {
        const Idx fb = feedback[k].second;
        FeedbackEvent& ev = events.emplace_back();
        ev.time = u64_or(fb, "ts", 0);
        ev.attrs.begin = mark();
        add_str("feedback.tag", str(fb, "tag"));
        add("feedback.text", dom.find(fb, "text"));
        add("feedback.score", dom.find(fb, "score"));
        ev.attrs.end = mark();
      }
      s.events.end = static_cast<uint32_t>(events.size());
      s.annotations.begin = mark();
      for (size_t k = g; k < end; ++k) {
        const Idx fb = feedback[k].second;
        std::string_view tag = str(fb, "tag");
        if (tag.empty()) tag = "feedback";
        for (const auto& [field, suffix] :
             {std::pair<const char*, std::string_view>{"score", ".score"}, {"text", ".text"}}) {
          Value v;
          if (!value_of(dom.find(fb, field), &v)) continue;
          bool replaced = false;
          for (uint32_t a = s.annotations.begin; a < attrs.size(); ++a) {
            Attr& attr = attrs[a];
            if (attr.key.size() == 11 + tag.size() + suffix.size() &&
                attr.key.substr(11, tag.size()) == tag && attr.key.ends_with(suffix)) {
              attr.value = v;
              replaced = true;
              break;
            }
          }
          if (!replaced) attrs.push_back(Attr{concat("annotation.", tag, suffix), v});
        }
      }
      s.annotations.end = mark();
      g = end;
    }
  }

  // Adds the document in `dom` (a Resource and its spans; nothing when a
  // delta revision changed no span). Returns the spans added.
  size_t add_document() {
    const Idx doc = dom.root();
    const uint32_t attrs_at = mark();
    const uint32_t spans_at = static_cast<uint32_t>(spans.size());
    std::string_view trace_id = str(doc, "trace_id");
    id_bytes(trace_id, &trace.trace_id);
    trace.conversation_id = str(doc, "conversation_id");
    trace.session_id = str(doc, "session_id");
    trace.user_id = {};
    const Idx user = dom.find(doc, "user");
    if (user != kNone && dom.type(user) == Dom::Type::kObject) {
      const Idx uid = dom.find(user, "id");
      if (!dom.is_null(uid)) trace.user_id = text(uid);
    }
    const Idx md = dom.find(doc, "metadata");
    trace.metadata = dom.is_null(md) ? std::string_view() : text(md);
    trace.revision = dom.find(doc, "revision");
    const Idx evs = dom.find(doc, "events");
    Idx fbs = dom.find(doc, "feedback");
    if (fbs != kNone && dom.type(fbs) != Dom::Type::kArray) fbs = kNone;
    const auto each_feedback = [&](auto&& fn) {
      for (Idx fb = dom.first_child(fbs); fb != kNone; fb = dom.next(fbs, fb)) {
        if (dom.type(fb) == Dom::Type::kObject) fn(fb);
      }
    };

    // A later revision: only the changed spans, the spans that changed
    // feedback lands on, and the first root span when the trace context or
    // any feedback changed (a span's feedback attributes are rebuilt from all
    // of its feedback). Flags that are absent count as changed.
    const bool delta = u64_or(doc, "revision", 1) > 1;
    wanted.clear();
    all.clear();
    std::optional<std::string_view> first_root;
    bool root_changed = true;
    // Every event id: an orphan whose parent is not among them keeps it.
    each_event(evs, [&](Idx e, const std::array<char, 8>*, std::array<char, 8>*) {
      std::string_view id = str(e, "id");
      if (!first_root) first_root = id;
      all.insert(id);
      if (delta && flag_or(e, "changed", true)) wanted.insert(id);
    });
    if (delta) {
      bool feedback_changed = false;
      each_feedback([&](Idx fb) {
        if (!flag_or(fb, "changed", true)) return;
        feedback_changed = true;
        std::string_view tid = str(fb, "target_id");
        if (!tid.empty() && all.count(tid) != 0) wanted.insert(tid);
      });
      root_changed = feedback_changed || flag_or(doc, "trace_changed", true);
      if (first_root && root_changed) wanted.insert(*first_root);
    }

    index.clear();
    each_event(evs, [&](Idx e, const std::array<char, 8>* parent, std::array<char, 8>* own) {
      std::string_view id = str(e, "id");
      id_bytes(id, own);
      if (delta && wanted.count(id) == 0) return;
      index.emplace_back(id, static_cast<uint32_t>(spans.size()));
      std::array<char, 8> elsewhere;
      if (parent == nullptr) {
        // An orphan whose parent is elsewhere (another service's span, or
        // one not received yet) keeps it, so that the backend can join them.
        std::string_view pid = str(e, "parent_id");
        if (!pid.empty() && all.count(pid) == 0) {
          id_bytes(pid, &elsewhere);
          parent = &elsewhere;
        }
      }
      add_span(e, id, *own, parent);
    });
    // Whole-trace feedback lands on the first root span: the first span
    // built, unless the revision is a delta.
    uint32_t root = UINT32_MAX;
    if (!delta && spans.size() > spans_at) {
      root = spans_at;
    } else if (delta && first_root) {
      root = span_of(*first_root);
    } else if (spans.size() == spans_at && (!delta || root_changed)) {
      // A trace without events (feedback only): one synthetic root span.
      Span& s = spans.emplace_back();
      s.trace_id = trace.trace_id;
      id_bytes(concat("trace:", trace_id), &s.span_id);
      s.name = "trace";
      s.kind = 1;
      s.start = u64_or(doc, "start_ts", 0);
      s.end = u64_or(doc, "end_ts", s.start);
      s.attrs.begin = mark();
      add_str("openinference.span.kind", "CHAIN");
      add("sidetrace.trace.revision", trace.revision);
      s.attrs.end = mark();
      s.status_code = 0;
      root = spans_at;
    }
    feedback.clear();
    each_feedback([&](Idx fb) {
      uint32_t target = UINT32_MAX;
      std::string_view tid = str(fb, "target_id");
      if (!tid.empty()) target = span_of(tid);
      // Whole-trace feedback, and feedback about an event the document does
      // not hold, lands on the first root span. Feedback about an event whose
      // span a delta leaves out is not sent (its span is not either).
      if (target == UINT32_MAX && (tid.empty() || !delta || all.count(tid) == 0)) target = root;
      if (target != UINT32_MAX) feedback.emplace_back(target, fb);
    });
    add_feedback();
    if (spans.size() == spans_at) {
      attrs.resize(attrs_at);
      return 0;
    }

    Resource& r = resources.emplace_back();
    r.spans = Range{spans_at, static_cast<uint32_t>(spans.size())};
    r.attrs.begin = mark();
    add_str("service.name", "sidetrace");
    add_str("sidetrace.trace_id", trace_id);
    add("sidetrace.trace.revision", trace.revision);
    add_str("sidetrace.trace.status", str(doc, "status"));
    if (flag_or(doc, "partial", false)) add_true("sidetrace.trace.partial");
    if (const Idx p = dom.find(doc, "part"); p != kNone && dom.uint64(p)) {
      add("sidetrace.trace.part", p);
    }
    add_str("sidetrace.interaction_id", str(doc, "interaction_id"));
    add_str("sidetrace.channel_id", str(doc, "channel_id"));
    add_str("gen_ai.conversation.id", trace.conversation_id);
    add_str("session.id", trace.session_id);
    add_str("user.id", trace.user_id);
    r.attrs.end = mark();
    return spans.size() - spans_at;
  }
};

OtlpEncoder::OtlpEncoder() : s_(std::make_unique<State>()) {}
OtlpEncoder::~OtlpEncoder() = default;

namespace {
void write_protobuf(OtlpEncoder::State& s, std::string* out);
void write_json(const OtlpEncoder::State& s, std::string* out);
}  // namespace

bool OtlpEncoder::encode(std::span<const std::string_view> docs, OtlpEncoding encoding,
                         const std::function<void(std::string_view)>& sink, std::string* error) {
  State& s = *s_;
  const bool json = encoding == OtlpEncoding::kJson;
  spans_ = 0;
  if (json) sink("{\"resourceSpans\":[");
  bool first = true;
  for (auto text : docs) {
    s.pool.reset();
    s.attrs.clear();
    s.items.clear();
    s.spans.clear();
    s.events.clear();
    s.resources.clear();
    if (!s.dom.parse(text) || s.dom.type(s.dom.root()) != JsonDom::Type::kObject) {
      *error = "trace document is not a JSON object";
      return false;
    }
    spans_ += s.add_document();
    if (s.resources.empty()) continue;
    s.out.clear();
    if (json) {
      if (!first) s.out.push_back(',');
      write_json(s, &s.out);
    } else {
      write_protobuf(s, &s.out);
    }
    first = false;
    sink(s.out);
  }
  if (json) sink("]}");
  // A document's body is kept for the next one, up to a bound.
  if (s.out.capacity() > StringPool::kKeepCapacity * 16) std::string().swap(s.out);
  return true;
}

// ---- the protobuf encoding ---------------------------------------------------------
//
// Written directly, field by field in field-number order as the protobuf
// library writes them (so that the library re-encodes a decoded request to
// the same bytes), with a sizing pass first for the length prefixes. The
// field numbers are those of otlp/proto/*.proto.

namespace {

constexpr size_t varint_size(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

// A length-delimited field of a one-byte tag (field numbers below 16).
constexpr size_t len_field(size_t len) {
  return 1 + varint_size(len) + len;
}

using Model = OtlpEncoder::State;

size_t value_size(const Model& m, const Value& v) {
  switch (v.kind) {
    case Value::Kind::kString:
      return len_field(v.s.size());  // string_value = 1
    case Value::Kind::kBool:
      return 2;  // bool_value = 2
    case Value::Kind::kInt:
      return 1 + varint_size(static_cast<uint64_t>(v.i));  // int_value = 3
    case Value::Kind::kDouble:
      return 9;  // double_value = 4
    case Value::Kind::kArray: {
      size_t n = 0;  // ArrayValue.values = 1
      for (uint32_t k = v.items.begin; k < v.items.end; ++k)
        n += len_field(value_size(m, m.items[k]));
      return len_field(n);  // array_value = 5
    }
  }
  return 0;
}

size_t kv_size(const Model& m, const Attr& a) {
  return (a.key.empty() ? 0 : len_field(a.key.size())) + len_field(value_size(m, a.value));
}

class Writer {
 public:
  Writer(const Model& m, char* p) : m_(m), p_(p) {}
  char* end() const { return p_; }

  void tag(uint8_t field, uint8_t wire) { *p_++ = static_cast<char>(field << 3 | wire); }
  void varint(uint64_t v) {
    while (v >= 0x80) {
      *p_++ = static_cast<char>(v | 0x80);
      v >>= 7;
    }
    *p_++ = static_cast<char>(v);
  }
  void fixed64(uint64_t v) {
    for (int k = 0; k < 8; ++k) {
      *p_++ = static_cast<char>(v & 0xff);
      v >>= 8;
    }
  }
  void bytes(uint8_t field, std::string_view b) {
    tag(field, 2);
    varint(b.size());
    std::memcpy(p_, b.data(), b.size());
    p_ += b.size();
  }
  void message(uint8_t field, size_t size) {
    tag(field, 2);
    varint(size);
  }
  void value(const Value& v) {
    switch (v.kind) {
      case Value::Kind::kString:
        bytes(1, v.s);
        break;
      case Value::Kind::kBool:
        tag(2, 0);
        *p_++ = v.b ? 1 : 0;
        break;
      case Value::Kind::kInt:
        tag(3, 0);
        varint(static_cast<uint64_t>(v.i));
        break;
      case Value::Kind::kDouble: {
        uint64_t bits = 0;
        std::memcpy(&bits, &v.d, 8);
        tag(4, 1);
        fixed64(bits);
        break;
      }
      case Value::Kind::kArray: {
        size_t n = 0;
        for (uint32_t k = v.items.begin; k < v.items.end; ++k)
          n += len_field(value_size(m_, m_.items[k]));
        message(5, n);
        for (uint32_t k = v.items.begin; k < v.items.end; ++k) {
          message(1, value_size(m_, m_.items[k]));
          value(m_.items[k]);
        }
        break;
      }
    }
  }
  void attrs(uint8_t field, Range r) {
    for (uint32_t k = r.begin; k < r.end; ++k) {
      const Attr& a = m_.attrs[k];
      message(field, kv_size(m_, a));
      if (!a.key.empty()) bytes(1, a.key);
      message(2, value_size(m_, a.value));
      value(a.value);
    }
  }

 private:
  const Model& m_;
  char* p_;
};

size_t attrs_size(const Model& m, Range r) {
  size_t n = 0;
  for (uint32_t k = r.begin; k < r.end; ++k)
    n += len_field(kv_size(m, m.attrs[k]));
  return n;
}

constexpr std::string_view kScopeName = "sidetrace";
constexpr std::string_view kScopeVersion = "1";
constexpr std::string_view kFeedback = "feedback";
constexpr size_t kScopeSize = len_field(kScopeName.size()) + len_field(kScopeVersion.size());

size_t event_size(const Model& m, const FeedbackEvent& e) {
  return (e.time != 0 ? 9 : 0) + len_field(kFeedback.size()) + attrs_size(m, e.attrs);
}

size_t status_size(const Span& s) {
  return (s.status_message.empty() ? 0 : len_field(s.status_message.size())) +
         (s.status_code != 0 ? 1 + varint_size(static_cast<uint64_t>(s.status_code)) : 0);
}

// Appends the ResourceSpans of the model, each a resource_spans field of an
// ExportTraceServiceRequest (a request is the concatenation of its fields).
void write_protobuf(OtlpEncoder::State& s, std::string* out) {
  // Sizes, innermost first.
  size_t total = 0;
  for (Resource& r : s.resources) {
    r.scope_spans_size = len_field(kScopeSize);
    for (uint32_t k = r.spans.begin; k < r.spans.end; ++k) {
      Span& sp = s.spans[k];
      size_t n = len_field(sp.trace_id.size()) + len_field(sp.span_id.size());
      if (sp.has_parent) n += len_field(sp.parent_id.size());
      if (!sp.name.empty()) n += len_field(sp.name.size());
      if (sp.kind != 0) n += 1 + varint_size(static_cast<uint64_t>(sp.kind));
      if (sp.start != 0) n += 9;
      if (sp.end != 0) n += 9;
      n += attrs_size(s, sp.attrs) + attrs_size(s, sp.annotations);
      for (uint32_t e = sp.events.begin; e < sp.events.end; ++e)
        n += len_field(event_size(s, s.events[e]));
      n += len_field(status_size(sp));
      sp.size = n;
      r.scope_spans_size += len_field(n);
    }
    r.size = len_field(attrs_size(s, r.attrs)) + len_field(r.scope_spans_size);
    total += len_field(r.size);
  }
  const size_t at = out->size();
  out->resize(at + total);
  Writer w(s, out->data() + at);
  for (const Resource& r : s.resources) {
    w.message(1, r.size);                  // ExportTraceServiceRequest.resource_spans
    w.message(1, attrs_size(s, r.attrs));  // ResourceSpans.resource
    w.attrs(1, r.attrs);                   // Resource.attributes
    w.message(2, r.scope_spans_size);      // ResourceSpans.scope_spans
    w.message(1, kScopeSize);              // ScopeSpans.scope
    w.bytes(1, kScopeName);
    w.bytes(2, kScopeVersion);
    for (uint32_t k = r.spans.begin; k < r.spans.end; ++k) {
      const Span& sp = s.spans[k];
      w.message(2, sp.size);  // ScopeSpans.spans
      w.bytes(1, {sp.trace_id.data(), sp.trace_id.size()});
      w.bytes(2, {sp.span_id.data(), sp.span_id.size()});
      if (sp.has_parent) w.bytes(4, {sp.parent_id.data(), sp.parent_id.size()});
      if (!sp.name.empty()) w.bytes(5, sp.name);
      if (sp.kind != 0) {
        w.tag(6, 0);
        w.varint(static_cast<uint64_t>(sp.kind));
      }
      if (sp.start != 0) {
        w.tag(7, 1);
        w.fixed64(sp.start);
      }
      if (sp.end != 0) {
        w.tag(8, 1);
        w.fixed64(sp.end);
      }
      w.attrs(9, sp.attrs);
      w.attrs(9, sp.annotations);
      for (uint32_t e = sp.events.begin; e < sp.events.end; ++e) {
        const FeedbackEvent& ev = s.events[e];
        w.message(11, event_size(s, ev));
        if (ev.time != 0) {
          w.tag(1, 1);
          w.fixed64(ev.time);
        }
        w.bytes(2, kFeedback);
        w.attrs(3, ev.attrs);
      }
      w.message(15, status_size(sp));
      if (!sp.status_message.empty()) w.bytes(2, sp.status_message);
      if (sp.status_code != 0) {
        w.tag(3, 0);
        w.varint(static_cast<uint64_t>(sp.status_code));
      }
    }
  }
  if (w.end() != out->data() + out->size()) {
    throw std::logic_error("OTLP protobuf encoding: sizing and writing disagree");
  }
}

}  // namespace

// ---- the JSON encoding -----------------------------------------------------------

namespace {

void append_escaped(std::string* out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out->push_back('"');
  size_t run = 0;  // start of the current run of bytes copied as they are
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out->append(s.data() + run, i - run);
    run = i + 1;
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        out->append("\\u00");
        out->push_back(kHex[c >> 4]);
        out->push_back(kHex[c & 15]);
    }
  }
  out->append(s.data() + run, s.size() - run);
  out->push_back('"');
}

void append_hex(std::string* out, std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  out->push_back('"');
  for (unsigned char c : bytes) {
    out->push_back(kHex[c >> 4]);
    out->push_back(kHex[c & 15]);
  }
  out->push_back('"');
}

// An integer in decimal; quoted: the OTLP JSON form of 64-bit integers.
template <typename T>
void append_int(std::string* out, T v, bool quoted) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  if (quoted) out->push_back('"');
  out->append(buf, end);
  if (quoted) out->push_back('"');
}

void append_value(std::string* out, const Model& m, const Value& v) {
  switch (v.kind) {
    case Value::Kind::kString:
      out->append("{\"stringValue\":");
      append_escaped(out, v.s);
      break;
    case Value::Kind::kBool:
      out->append(v.b ? "{\"boolValue\":true" : "{\"boolValue\":false");
      break;
    case Value::Kind::kInt:
      out->append("{\"intValue\":");
      append_int(out, v.i, true);
      break;
    case Value::Kind::kDouble:
      // Shortest round-trip form; values read from JSON are finite.
      fmt::format_to(std::back_inserter(*out), "{{\"doubleValue\":{}", v.d);
      break;
    case Value::Kind::kArray:
      out->append("{\"arrayValue\":{\"values\":[");
      for (uint32_t k = v.items.begin; k < v.items.end; ++k) {
        if (k > v.items.begin) out->push_back(',');
        append_value(out, m, m.items[k]);
      }
      out->append("]}");
      break;
  }
  out->push_back('}');
}

// The attributes of the ranges, as one array.
void append_attrs(std::string* out, const Model& m, Range a, Range b = {}) {
  out->push_back('[');
  bool first = true;
  for (Range r : {a, b}) {
    for (uint32_t k = r.begin; k < r.end; ++k) {
      if (!first) out->push_back(',');
      first = false;
      out->append("{\"key\":");
      append_escaped(out, m.attrs[k].key);
      out->append(",\"value\":");
      append_value(out, m, m.attrs[k].value);
      out->push_back('}');
    }
  }
  out->push_back(']');
}

// Appends the ResourceSpans of the model as the items of a JSON array.
void write_json(const OtlpEncoder::State& s, std::string* out) {
  for (size_t r = 0; r < s.resources.size(); ++r) {
    const Resource& res = s.resources[r];
    if (r > 0) out->push_back(',');
    out->append("{\"resource\":{\"attributes\":");
    append_attrs(out, s, res.attrs);
    out->append("},\"scopeSpans\":[{\"scope\":{\"name\":");
    append_escaped(out, kScopeName);
    out->append(",\"version\":");
    append_escaped(out, kScopeVersion);
    out->append("},\"spans\":[");
    for (uint32_t k = res.spans.begin; k < res.spans.end; ++k) {
      const Span& sp = s.spans[k];
      if (k > res.spans.begin) out->push_back(',');
      out->append("{\"traceId\":");
      append_hex(out, {sp.trace_id.data(), sp.trace_id.size()});
      out->append(",\"spanId\":");
      append_hex(out, {sp.span_id.data(), sp.span_id.size()});
      if (sp.has_parent) {
        out->append(",\"parentSpanId\":");
        append_hex(out, {sp.parent_id.data(), sp.parent_id.size()});
      }
      out->append(",\"name\":");
      append_escaped(out, sp.name);
      out->append(",\"kind\":");
      append_int(out, sp.kind, false);
      out->append(",\"startTimeUnixNano\":");
      append_int(out, sp.start, true);
      out->append(",\"endTimeUnixNano\":");
      append_int(out, sp.end, true);
      out->append(",\"attributes\":");
      append_attrs(out, s, sp.attrs, sp.annotations);
      out->append(",\"events\":[");
      for (uint32_t e = sp.events.begin; e < sp.events.end; ++e) {
        const FeedbackEvent& ev = s.events[e];
        if (e > sp.events.begin) out->push_back(',');
        out->append("{\"timeUnixNano\":");
        append_int(out, ev.time, true);
        out->append(",\"name\":");
        append_escaped(out, kFeedback);
        out->append(",\"attributes\":");
        append_attrs(out, s, ev.attrs);
        out->push_back('}');
      }
      out->append("],\"status\":{\"code\":");
      append_int(out, sp.status_code, false);
      if (!sp.status_message.empty()) {
        out->append(",\"message\":");
        append_escaped(out, sp.status_message);
      }
      out->append("}}");
    }
    out->append("]}]}");
  }
}

}  // namespace

namespace {

// ---- responses -------------------------------------------------------------------

std::string_view strip(std::string_view s);

bool looks_like_json(std::string_view body) {
  body = strip(body);
  return !body.empty() && body.front() == '{';
}

// Whether to read `body` as protobuf (else JSON).
bool read_as_protobuf(std::string_view body, std::string_view content_type) {
  if (is_protobuf_type(content_type)) return true;
  std::string type = lower(trim(content_type.substr(0, content_type.find(';'))));
  if (type == "application/json") return false;
  return !looks_like_json(body);
}

const char* rpc_code_name(int64_t code) {
  static constexpr const char* kNames[] = {"OK",
                                           "CANCELLED",
                                           "UNKNOWN",
                                           "INVALID_ARGUMENT",
                                           "DEADLINE_EXCEEDED",
                                           "NOT_FOUND",
                                           "ALREADY_EXISTS",
                                           "PERMISSION_DENIED",
                                           "RESOURCE_EXHAUSTED",
                                           "FAILED_PRECONDITION",
                                           "ABORTED",
                                           "OUT_OF_RANGE",
                                           "UNIMPLEMENTED",
                                           "INTERNAL",
                                           "UNAVAILABLE",
                                           "DATA_LOSS",
                                           "UNAUTHENTICATED"};
  return code >= 0 && code < static_cast<int64_t>(std::size(kNames)) ? kNames[code] : "?";
}

// `s` cut to `limit` bytes (not inside a UTF-8 sequence), with control
// characters as spaces: safe for one log line.
std::string printable(std::string_view s, size_t limit) {
  if (s.size() > limit) {
    size_t cut = limit;
    while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xc0) == 0x80)
      --cut;
    s = s.substr(0, cut);
  }
  std::string out(s);
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  }
  return out;
}

// `s` without white space (including line ends) around it.
std::string_view strip(std::string_view s) {
  const auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  while (!s.empty() && ws(s.front()))
    s.remove_prefix(1);
  while (!s.empty() && ws(s.back()))
    s.remove_suffix(1);
  return s;
}

int64_t json_int(const json& v) {
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_unsigned())
    return static_cast<int64_t>(std::min<uint64_t>(v.get<uint64_t>(), INT64_MAX));
  if (v.is_string()) {
    const std::string& s = v.get_ref<const std::string&>();
    int64_t n = 0;
    std::from_chars(s.data(), s.data() + s.size(), n);
    return n;
  }
  return 0;
}

const json* find_either(const json& j, const char* camel, const char* snake) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(camel);
  if (it == j.end()) it = j.find(snake);
  return it == j.end() ? nullptr : &*it;
}

}  // namespace

// ---- responses -----------------------------------------------------------------

std::string log_safe(std::string_view text, size_t limit) {
  return printable(text, limit);
}

bool is_protobuf_type(std::string_view content_type) {
  std::string type = lower(trim(content_type.substr(0, content_type.find(';'))));
  return type == "application/x-protobuf" || type == "application/protobuf";
}

bool decode_partial_success(std::string_view body, std::string_view content_type,
                            PartialSuccess* out) {
  *out = PartialSuccess{};
  if (strip(body).empty()) return true;
  if (read_as_protobuf(body, content_type)) {
    opentelemetry::proto::collector::trace::v1::ExportTraceServiceResponse r;
    if (!r.ParseFromArray(body.data(), static_cast<int>(body.size()))) return false;
    out->rejected_spans = r.partial_success().rejected_spans();
    out->error_message = r.partial_success().error_message();
    return true;
  }
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return false;
  const json* ps = find_either(j, "partialSuccess", "partial_success");
  if (ps == nullptr || !ps->is_object()) return true;
  if (const json* r = find_either(*ps, "rejectedSpans", "rejected_spans")) {
    out->rejected_spans = json_int(*r);
  }
  if (const json* m = find_either(*ps, "errorMessage", "error_message"); m && m->is_string()) {
    out->error_message = m->get<std::string>();
  }
  return true;
}

std::string describe_error_body(std::string_view body, std::string_view content_type,
                                size_t limit) {
  if (strip(body).empty()) return {};
  auto status_text = [&](int64_t code, std::string_view message) {
    return printable(fmt::format("code {} ({}): {}", code, rpc_code_name(code), message), limit);
  };
  const bool text = std::all_of(body.begin(), body.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u >= 0x20 || c == '\n' || c == '\r' || c == '\t';
  });
  // Binary is read as protobuf only when it says so, or says nothing.
  if (is_protobuf_type(content_type) || (strip(content_type).empty() && !text)) {
    google::rpc::Status st;
    if (st.ParseFromArray(body.data(), static_cast<int>(body.size())) &&
        (st.code() != 0 || !st.message().empty())) {
      return status_text(st.code(), st.message());
    }
    return {};
  }
  if (looks_like_json(body)) {
    json j = json::parse(body, nullptr, false);
    if (!j.is_discarded() && j.is_object() && j.empty()) return {};  // nothing said
    if (!j.is_discarded() && j.is_object() && (j.contains("code") || j.contains("message"))) {
      auto m = j.find("message");
      return status_text(j.contains("code") ? json_int(j["code"]) : 0,
                         m != j.end() && m->is_string()
                             ? std::string_view(m->get_ref<const std::string&>())
                             : std::string_view());
    }
  }
  // Not a Status: the body itself, when it is text.
  return text ? printable(strip(body), limit) : std::string();
}

// ---- free functions of encode.h ------------------------------------------------

bool append_otlp_body(std::span<const std::string_view> docs, std::string* out,
                      std::string* error) {
  OtlpEncoder e;
  return e.encode(
      docs, OtlpEncoding::kJson, [&](std::string_view p) { out->append(p); }, error);
}

bool append_otlp_protobuf(std::span<const std::string_view> docs, std::string* out,
                          std::string* error) {
  OtlpEncoder e;
  return e.encode(
      docs, OtlpEncoding::kProtobuf, [&](std::string_view p) { out->append(p); }, error);
}

}  // namespace sidetrace::upstream::detail

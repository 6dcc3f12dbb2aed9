#include "upstream/detail/neuraltrust.h"

#include <openssl/evp.h>

#include <array>
#include <cctype>
#include <nlohmann/json.hpp>
#include <utility>

namespace sidetrace::upstream::detail {

namespace {

// Ordered, so that a body lists its fields in the documented order and keeps
// the key order of the app's `user` and `metadata`.
using json = nlohmann::ordered_json;

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

// The trace-level fields every request of a document repeats.
struct Context {
  json interaction_id;
  json conversation_id;
  json session_id;
  json channel_id;
  json user;
  json metadata;
};

const json* find(const json& obj, const char* key) {
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}

// A string field, else null.
json text_or_null(const json& obj, const char* key) {
  const json* v = find(obj, key);
  return v != nullptr && v->is_string() ? *v : json(nullptr);
}

// A non-empty string field, else `fallback`.
json text_or(const json& obj, const char* key, const json& fallback) {
  const json* v = find(obj, key);
  return v != nullptr && v->is_string() && !v->get_ref<const std::string&>().empty() ? *v
                                                                                     : fallback;
}

// A non-empty object, else null: the SDK sends null for a trace without a
// user or metadata.
json object_or_null(const json& obj, const char* key) {
  const json* v = find(obj, key);
  return v != nullptr && v->is_object() && !v->empty() ? *v : json(nullptr);
}

// `input`/`output`: strings as they are, other values as their JSON text.
json as_text(const json* v) {
  if (v == nullptr || v->is_null()) return nullptr;
  if (v->is_string()) return *v;
  return dump(*v);
}

// A timestamp in ns (an integer, possibly beyond 2^63), if it is one.
bool ns_of(const json* v, __int128* out) {
  if (v == nullptr) return false;
  if (v->is_number_unsigned()) {
    *out = v->get<uint64_t>();
    return true;
  }
  if (v->is_number_integer()) {
    *out = v->get<int64_t>();
    return true;
  }
  return false;
}

// ns -> epoch milliseconds, rounded down.
json ms_of(const json* v) {
  __int128 ns = 0;
  if (!ns_of(v, &ns)) return nullptr;
  __int128 ms = ns / 1'000'000;
  if (ns < 0 && ms * 1'000'000 != ns) --ms;
  if (ms >= 0) return static_cast<uint64_t>(ms);
  return static_cast<int64_t>(ms);
}

// Whole milliseconds from start to end; 0 for a negative span (clock skew),
// null unless both are known.
json latency_of(const json* start, const json* end) {
  __int128 s = 0, e = 0;
  if (!ns_of(start, &s) || !ns_of(end, &e)) return nullptr;
  if (e <= s) return 0;
  return static_cast<uint64_t>((e - s) / 1'000'000);
}

// The NeuralTrust task of a sidetrace event type (case-insensitive); custom
// types become "event" and set *custom_type (not for CUSTOM itself, which
// names no type, nor for a missing type).
const char* task_of(const json* type, std::string* custom_type) {
  static constexpr std::array<std::pair<std::string_view, const char*>, 8> kTasks = {{
      {"MESSAGE", "message"},
      {"TOOL", "tool"},
      {"GENERATION", "generation"},
      {"AGENT", "agent"},
      {"RETRIEVAL", "retrieval"},
      {"ROUTER", "router"},
      {"SYSTEM", "system"},
      {"CUSTOM", "event"},
  }};
  if (type == nullptr || !type->is_string()) return "event";
  const std::string& name = type->get_ref<const std::string&>();
  std::string upper = name;
  for (char& c : upper)
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (const auto& [t, task] : kTasks) {
    if (upper == t) return task;
  }
  *custom_type = name;
  return "event";
}

// Whether an item goes out: every item of revision 1; on later revisions
// those not marked "changed": false.
bool wanted(const json& item, bool later_revision) {
  if (!later_revision) return true;
  const json* changed = find(item, "changed");
  return changed == nullptr || !changed->is_boolean() || changed->get<bool>();
}

json body_head(const json& id, const Context& ctx, const json& parent_id, const char* task) {
  json b = json::object();
  b["trace_id"] = id;
  b["interaction_id"] = ctx.interaction_id;
  b["conversation_id"] = ctx.conversation_id;
  b["session_id"] = ctx.session_id;
  b["channel_id"] = ctx.channel_id;
  b["parent_id"] = parent_id;
  b["type"] = "traces";
  b["task"] = task;
  return b;
}

void body_tail(json& b, const Context& ctx, const json& custom) {
  b["user"] = ctx.user;
  b["metadata"] = ctx.metadata;
  b["custom"] = custom.empty() ? json(nullptr) : json(dump(custom));
}

void add_events(const json& events, const Context& ctx, bool later_revision,
                NeuralTrustRequests* out) {
  if (!events.is_array()) return;
  for (const json& e : events) {
    if (!e.is_object()) continue;
    if (wanted(e, later_revision)) {
      std::string custom_type;
      const char* task = task_of(find(e, "type"), &custom_type);
      json id = text_or_null(e, "id");
      json b = body_head(id, ctx, text_or_null(e, "parent_id"), task);
      b["input"] = as_text(find(e, "input"));
      b["output"] = as_text(find(e, "output"));
      b["feedback_tag"] = nullptr;
      b["feedback_text"] = nullptr;
      b["start_timestamp"] = ms_of(find(e, "start_ts"));
      b["end_timestamp"] = ms_of(find(e, "end_ts"));
      b["latency"] = latency_of(find(e, "start_ts"), find(e, "end_ts"));
      // What NeuralTrust has no field for.
      json custom = json::object();
      if (!custom_type.empty()) custom["type"] = custom_type;
      const json* status = find(e, "status");
      if (status != nullptr && status->is_string() && *status == "error") {
        custom["status"] = "error";
        custom["error"] = text_or_null(e, "error");
      }
      body_tail(b, ctx, custom);
      out->bodies.push_back(dump(b));
      out->ids.push_back(id.is_string() ? id.get<std::string>() : std::string());
      ++out->events;
    }
    if (const json* children = find(e, "children")) add_events(*children, ctx, later_revision, out);
  }
}

std::string feedback_id(std::string_view trace_id, const json& item) {
  json key = json::array();
  for (const char* k : {"tag", "text", "score", "target_id", "ts"}) {
    const json* v = find(item, k);
    key.push_back(v != nullptr ? *v : json(nullptr));
  }
  std::string in(trace_id);
  in.push_back('\n');
  in += dump(key);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  EVP_Digest(in.data(), in.size(), md, &md_len, EVP_sha256(), nullptr);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < 16 && i < md_len; ++i) {
    out.push_back(kHex[md[i] >> 4]);
    out.push_back(kHex[md[i] & 15]);
  }
  return out;
}

}  // namespace

bool neuraltrust_requests(std::string_view doc, NeuralTrustRequests* out, std::string* error) {
  *out = {};
  json d = json::parse(doc, nullptr, false);
  if (d.is_discarded() || !d.is_object()) {
    *error = "the trace document is not a JSON object";
    return false;
  }
  json trace_id = text_or_null(d, "trace_id");
  if (!trace_id.is_string()) {
    *error = "the trace document has no trace_id";
    return false;
  }
  const json* revision = find(d, "revision");
  const bool later_revision =
      revision != nullptr && revision->is_number() && revision->get<double>() > 1;
  Context ctx;
  // As the SDK: the trace's own id unless the app named the interaction, and
  // a conversation of its own for a trace without one.
  ctx.interaction_id = text_or(d, "interaction_id", trace_id);
  ctx.conversation_id = text_or(d, "conversation_id", trace_id);
  ctx.session_id = text_or_null(d, "session_id");
  ctx.channel_id = text_or_null(d, "channel_id");
  ctx.user = object_or_null(d, "user");
  ctx.metadata = object_or_null(d, "metadata");

  if (const json* events = find(d, "events")) add_events(*events, ctx, later_revision, out);

  const json* feedback = find(d, "feedback");
  if (feedback == nullptr || !feedback->is_array()) return true;
  const std::string& tid = trace_id.get_ref<const std::string&>();
  for (const json& f : *feedback) {
    if (!f.is_object() || !wanted(f, later_revision)) continue;
    std::string id = feedback_id(tid, f);
    json b = body_head(id, ctx, text_or_null(f, "target_id"), "feedback");
    b["input"] = nullptr;
    b["output"] = nullptr;
    b["feedback_tag"] = text_or_null(f, "tag");
    b["feedback_text"] = text_or_null(f, "text");
    b["start_timestamp"] = ms_of(find(f, "ts"));
    b["end_timestamp"] = b["start_timestamp"];
    b["latency"] = nullptr;
    json custom = json::object();
    if (const json* score = find(f, "score"); score != nullptr && score->is_number()) {
      custom["score"] = *score;
    }
    body_tail(b, ctx, custom);
    out->bodies.push_back(dump(b));
    out->ids.push_back(std::move(id));
  }
  return true;
}

bool truncate_neuraltrust_body(std::string* body) {
  json b = json::parse(*body, nullptr, false);
  if (b.is_discarded() || !b.is_object()) return false;
  json* best = nullptr;
  size_t best_size = 0;
  for (const char* key : {"input", "output"}) {
    auto it = b.find(key);
    if (it == b.end() || it->is_null()) continue;
    if (it->is_string() && it->get_ref<const std::string&>().starts_with("[truncated ")) continue;
    size_t n = dump(*it).size();
    if (n > best_size) {
      best_size = n;
      best = &*it;
    }
  }
  std::string marker = "[truncated " + std::to_string(best_size) + " bytes]";
  if (best == nullptr || best_size <= marker.size() + 2) return false;
  *best = marker;
  *body = dump(b);
  return true;
}

std::string neuraltrust_feedback_id(std::string_view trace_id, std::string_view item_json) {
  json item = json::parse(item_json, nullptr, false);
  if (item.is_discarded() || !item.is_object()) return {};
  return feedback_id(trace_id, item);
}

}  // namespace sidetrace::upstream::detail

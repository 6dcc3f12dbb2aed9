#include "ipc/otlp_map.h"

#include <fmt/format.h>
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <charconv>
#include <msgpack.hpp>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include <vector>

#include "otlp/proto/trace_service.pb.h"

namespace sidetrace::ipc {

namespace pbc = opentelemetry::proto::common::v1;
namespace pbt = opentelemetry::proto::trace::v1;
using nlohmann::json;

namespace {

// ---------------------------------------------------------------------------
// msgpack into a std::string

struct StringOut {
  std::string* s;
  void write(const char* p, size_t n) { s->append(p, n); }
};
using Packer = msgpack::packer<StringOut>;

void pack_str(Packer& pk, std::string_view s) {
  pk.pack_str(static_cast<uint32_t>(s.size()));
  pk.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}

// Nesting deeper than this is written as nil (protobuf's parser already
// stops at 100 levels).
constexpr int kMaxDepth = 32;

void pack_any(Packer& pk, const pbc::AnyValue& v, int depth = 0) {
  if (depth > kMaxDepth) {
    pk.pack_nil();
    return;
  }
  switch (v.value_case()) {
    case pbc::AnyValue::kStringValue:
      pack_str(pk, v.string_value());
      break;
    case pbc::AnyValue::kBoolValue:
      if (v.bool_value()) {
        pk.pack_true();
      } else {
        pk.pack_false();
      }
      break;
    case pbc::AnyValue::kIntValue:
      pk.pack_int64(v.int_value());
      break;
    case pbc::AnyValue::kDoubleValue:
      pk.pack_double(v.double_value());
      break;
    case pbc::AnyValue::kArrayValue: {
      const auto& a = v.array_value().values();
      pk.pack_array(static_cast<uint32_t>(a.size()));
      for (const auto& e : a)
        pack_any(pk, e, depth + 1);
      break;
    }
    case pbc::AnyValue::kKvlistValue: {
      const auto& kv = v.kvlist_value().values();
      pk.pack_map(static_cast<uint32_t>(kv.size()));
      for (const auto& e : kv) {
        pack_str(pk, e.key());
        pack_any(pk, e.value(), depth + 1);
      }
      break;
    }
    case pbc::AnyValue::kBytesValue:
      pk.pack_bin(static_cast<uint32_t>(v.bytes_value().size()));
      pk.pack_bin_body(v.bytes_value().data(), static_cast<uint32_t>(v.bytes_value().size()));
      break;
    case pbc::AnyValue::VALUE_NOT_SET:
      pk.pack_nil();
      break;
  }
}

// A scalar attribute as text (ids of conversations, sessions and users are
// strings in the protocol); empty for arrays, maps and bytes.
std::string any_text(const pbc::AnyValue& v) {
  switch (v.value_case()) {
    case pbc::AnyValue::kStringValue:
      return v.string_value();
    case pbc::AnyValue::kBoolValue:
      return v.bool_value() ? "true" : "false";
    case pbc::AnyValue::kIntValue:
      return std::to_string(v.int_value());
    case pbc::AnyValue::kDoubleValue:
      return fmt::format("{}", v.double_value());
    default:
      return {};
  }
}

std::string_view any_string(const pbc::AnyValue* v) {
  if (v == nullptr || v->value_case() != pbc::AnyValue::kStringValue) return {};
  return v->string_value();
}

bool all_zero(std::string_view bytes) {
  return std::all_of(bytes.begin(), bytes.end(), [](char c) { return c == 0; });
}

// ---------------------------------------------------------------------------
// What a span's attributes and events say

// Attributes the mapping reads; each is found by its exact key.
enum Attr : uint8_t {
  kInputValue,
  kOutputValue,
  kInputMime,
  kOutputMime,
  kInputMessages,   // gen_ai.input.messages
  kOutputMessages,  // gen_ai.output.messages
  kPrompt,          // gen_ai.prompt
  kCompletion,      // gen_ai.completion
  kConversation,
  kSession,
  kUser,
  kOperation,
  kSpanKind,
  kModel,           // gen_ai.request.model
  kModelOi,         // llm.model_name
  kInputTokens,     // gen_ai.usage.input_tokens
  kInputTokensOi,   // llm.token_count.prompt
  kOutputTokens,    // gen_ai.usage.output_tokens
  kOutputTokensOi,  // llm.token_count.completion
  kTemperature,     // gen_ai.request.temperature
  // Plain keys of the protocol's well-known attributes, when a span carries
  // them itself: they are then not filled from the GenAI attributes.
  kPlainModel,
  kPlainInputTokens,
  kPlainOutputTokens,
  kPlainTemperature,
  kAttrCount,
  kOther,
};

Attr classify(std::string_view k) {
  static const std::unordered_map<std::string_view, Attr> known = {
      {"input.value", kInputValue},
      {"output.value", kOutputValue},
      {"input.mime_type", kInputMime},
      {"output.mime_type", kOutputMime},
      {"gen_ai.input.messages", kInputMessages},
      {"gen_ai.output.messages", kOutputMessages},
      {"gen_ai.prompt", kPrompt},
      {"gen_ai.completion", kCompletion},
      {"gen_ai.conversation.id", kConversation},
      {"session.id", kSession},
      {"user.id", kUser},
      {"gen_ai.operation.name", kOperation},
      {"openinference.span.kind", kSpanKind},
      {"gen_ai.request.model", kModel},
      {"llm.model_name", kModelOi},
      {"gen_ai.usage.input_tokens", kInputTokens},
      {"llm.token_count.prompt", kInputTokensOi},
      {"gen_ai.usage.output_tokens", kOutputTokens},
      {"llm.token_count.completion", kOutputTokensOi},
      {"gen_ai.request.temperature", kTemperature},
      {"model", kPlainModel},
      {"input_tokens", kPlainInputTokens},
      {"output_tokens", kPlainOutputTokens},
      {"temperature", kPlainTemperature},
  };
  auto it = known.find(k);
  return it == known.end() ? kOther : it->second;
}

// "gen_ai.prompt.3.content" → (3, "content") for `prefix` "gen_ai.prompt.".
bool indexed(std::string_view key, std::string_view prefix, uint32_t* index,
             std::string_view* field) {
  if (!key.starts_with(prefix)) return false;
  key.remove_prefix(prefix.size());
  const auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), *index);
  if (ec != std::errc() || end == key.data() || end == key.data() + key.size() || *end != '.') {
    return false;
  }
  *field = std::string_view(end + 1, static_cast<size_t>(key.data() + key.size() - end - 1));
  return !field->empty();
}

// One entry of an indexed prompt or completion list.
struct IndexedField {
  uint32_t index;
  std::string_view field;
  const pbc::AnyValue* value;
  int attr;  // position in the span's attributes
};

// The span events of the GenAI conventions that hold the conversation.
enum class EventRole : uint8_t { kOther, kInputMessage, kOutputChoice, kPrompt, kCompletion };

EventRole event_role(std::string_view name, std::string_view* role) {
  if (name == "gen_ai.system.message")
    *role = "system";
  else if (name == "gen_ai.user.message")
    *role = "user";
  else if (name == "gen_ai.assistant.message")
    *role = "assistant";
  else if (name == "gen_ai.tool.message")
    *role = "tool";
  else if (name == "gen_ai.choice")
    return EventRole::kOutputChoice;
  else if (name == "gen_ai.content.prompt")
    return EventRole::kPrompt;
  else if (name == "gen_ai.content.completion")
    return EventRole::kCompletion;
  else
    return EventRole::kOther;
  return EventRole::kInputMessage;
}

const pbc::AnyValue* event_attr(const pbt::Span::Event& e, std::string_view key) {
  for (const auto& kv : e.attributes()) {
    if (kv.key() == key) return &kv.value();
  }
  return nullptr;
}

// A map of an event's attributes, with "role" first when `role` is given and
// the event does not name one itself.
void pack_event_attrs(Packer& pk, const pbt::Span::Event& e, std::string_view role) {
  const bool add_role = !role.empty() && event_attr(e, "role") == nullptr;
  pk.pack_map(static_cast<uint32_t>(e.attributes_size() + (add_role ? 1 : 0)));
  if (add_role) {
    pack_str(pk, "role");
    pack_str(pk, role);
  }
  for (const auto& kv : e.attributes()) {
    pack_str(pk, kv.key());
    pack_any(pk, kv.value());
  }
}

// Where a span's input or output comes from.
struct Source {
  enum Kind : uint8_t { kNone, kValue, kIndexed, kEvents, kEventValue } kind = kNone;
  const pbc::AnyValue* value = nullptr;  // kValue, kEventValue
  std::vector<IndexedField> fields;      // kIndexed, sorted by index
  std::vector<int> events;               // kEvents: positions in the span's events
};

void pack_source(Packer& pk, const Source& s, const pbt::Span& span, bool input) {
  switch (s.kind) {
    case Source::kNone:
      break;
    case Source::kValue:
    case Source::kEventValue:
      pack_any(pk, *s.value);
      break;
    case Source::kIndexed: {
      uint32_t entries = 0;
      for (size_t i = 0; i < s.fields.size(); ++i) {
        if (i == 0 || s.fields[i].index != s.fields[i - 1].index) ++entries;
      }
      pk.pack_array(entries);
      for (size_t i = 0; i < s.fields.size();) {
        size_t j = i;
        while (j < s.fields.size() && s.fields[j].index == s.fields[i].index)
          ++j;
        pk.pack_map(static_cast<uint32_t>(j - i));
        for (; i < j; ++i) {
          pack_str(pk, s.fields[i].field);
          pack_any(pk, *s.fields[i].value);
        }
      }
      break;
    }
    case Source::kEvents: {
      pk.pack_array(static_cast<uint32_t>(s.events.size()));
      for (int idx : s.events) {
        const auto& e = span.events(idx);
        std::string_view role;
        event_role(e.name(), &role);
        pack_event_attrs(pk, e, input ? role : std::string_view());
      }
      break;
    }
  }
}

// The trace context gathered from the spans of one trace in one resource.
struct TraceContext {
  std::string trace_id;  // hex
  const pbc::AnyValue* conversation = nullptr;
  const pbc::AnyValue* session = nullptr;
  const pbc::AnyValue* user = nullptr;
  bool has_span = false;  // a span of the trace was accepted
};

class Mapper {
 public:
  Mapper(const DecodeLimits& limits, uint64_t recv_ns, OtlpMapped* out, size_t max_weight)
      : limits_(limits), recv_ns_(recv_ns), out_(out), max_weight_(max_weight) {}

  // False once the messages passed the weight bound.
  bool resource(const pbt::ResourceSpans& rs) {
    contexts_.clear();
    index_.clear();
    for (const auto& ss : rs.scope_spans()) {
      for (const auto& span : ss.spans()) {
        if (out_->weight > max_weight_) {
          out_->over_weight = true;
          return false;
        }
        ++out_->spans;
        this->span(span, ss.scope());
      }
    }
    for (const auto& ctx : contexts_) {
      if (ctx.has_span) trace(ctx, rs.resource().attributes());
    }
    return true;
  }

  void finish() {
    if (more_reasons_ > 0) out_->error += fmt::format(" (and {} more)", more_reasons_);
  }

 private:
  void note(std::string reason) {
    if (reasons_ >= 3) {
      ++more_reasons_;
      return;
    }
    if (!out_->error.empty()) out_->error += "; ";
    out_->error += reason;
    ++reasons_;
  }

  void reject(const pbt::Span& span, std::string_view why) {
    ++out_->rejected_spans;
    const std::string id = span.span_id().size() == 8 ? to_hex(span.span_id()) : std::string("?");
    note(fmt::format("span {}: {}", id, why));
  }

  // Validates `raw` with the protocol's decoder and queues it.
  bool add(std::string&& raw, std::string* why) {
    Message& m = out_->messages.emplace_back();
    Reject reason = Reject::kMalformed;
    if (!decode_message(raw, limits_, &m, &reason, why)) {
      out_->messages.pop_back();
      *why = fmt::format("{} ({})", reject_name(reason), *why);
      return false;
    }
    m.raw = std::move(raw);
    m.recv_ns = recv_ns_;
    out_->weight += m.weight();
    return true;
  }

  TraceContext& context(const std::string& trace_hex) {
    auto [it, inserted] = index_.try_emplace(trace_hex, contexts_.size());
    if (inserted) contexts_.push_back(TraceContext{trace_hex});
    return contexts_[it->second];
  }

  void span(const pbt::Span& span, const pbc::InstrumentationScope& scope) {
    if (span.trace_id().size() != 16 || all_zero(span.trace_id())) {
      return reject(span, "trace_id must be 16 bytes, not all zero");
    }
    if (span.span_id().size() != 8 || all_zero(span.span_id())) {
      return reject(span, "span_id must be 8 bytes, not all zero");
    }
    const std::string& parent = span.parent_span_id();
    if (!parent.empty() && parent.size() != 8) {
      return reject(span, "parent_span_id must be empty or 8 bytes");
    }
    const int n_attrs = span.attributes_size();
    std::array<int, kAttrCount> at;
    at.fill(-1);
    consumed_.assign(static_cast<size_t>(n_attrs), false);
    Source prompt_indexed, completion_indexed;
    prompt_indexed.kind = completion_indexed.kind = Source::kIndexed;
    for (int i = 0; i < n_attrs; ++i) {
      const auto& kv = span.attributes(i);
      const Attr a = classify(kv.key());
      if (a != kOther) {
        at[a] = i;
        continue;
      }
      IndexedField f{0, {}, &kv.value(), i};
      if (indexed(kv.key(), "gen_ai.prompt.", &f.index, &f.field)) {
        prompt_indexed.fields.push_back(f);
      } else if (indexed(kv.key(), "gen_ai.completion.", &f.index, &f.field)) {
        completion_indexed.fields.push_back(f);
      }
    }
    auto value = [&](Attr a) -> const pbc::AnyValue* {
      return at[a] < 0 ? nullptr : &span.attributes(at[a]).value();
    };
    auto consume = [&](Attr a) {
      if (at[a] >= 0) consumed_[static_cast<size_t>(at[a])] = true;
    };

    // Input and output: OpenInference's values, else the GenAI attributes,
    // else the GenAI events.
    Source input, output;
    auto from_attrs = [&](Source& s, Attr value_attr, Attr mime, Attr messages, Attr single,
                          Source& indexed_list) {
      if (const auto* v = value(value_attr)) {
        s.kind = Source::kValue;
        s.value = v;
        consume(value_attr);
        // A text value's mime type is implied (and given again on export).
        if (v->value_case() == pbc::AnyValue::kStringValue &&
            any_string(value(mime)) == "text/plain") {
          consume(mime);
        }
      } else if (const auto* m = value(messages)) {
        s.kind = Source::kValue;
        s.value = m;
        consume(messages);
      } else if (const auto* p = value(single)) {
        s.kind = Source::kValue;
        s.value = p;
        consume(single);
      } else if (!indexed_list.fields.empty()) {
        std::stable_sort(
            indexed_list.fields.begin(), indexed_list.fields.end(),
            [](const IndexedField& a, const IndexedField& b) { return a.index < b.index; });
        for (const auto& f : indexed_list.fields)
          consumed_[static_cast<size_t>(f.attr)] = true;
        s = std::move(indexed_list);
      }
    };
    from_attrs(input, kInputValue, kInputMime, kInputMessages, kPrompt, prompt_indexed);
    from_attrs(output, kOutputValue, kOutputMime, kOutputMessages, kCompletion, completion_indexed);

    // Span events: the conversation (when the attributes did not give it),
    // the exception that explains an error, and the rest kept as they are.
    const int n_events = span.events_size();
    events_used_.assign(static_cast<size_t>(n_events), false);
    const pbt::Span::Event* exception = nullptr;
    Source in_events, out_events;
    in_events.kind = out_events.kind = Source::kEvents;
    for (int i = 0; i < n_events; ++i) {
      const auto& e = span.events(i);
      std::string_view role;
      switch (event_role(e.name(), &role)) {
        case EventRole::kInputMessage:
          in_events.events.push_back(i);
          break;
        case EventRole::kOutputChoice:
          out_events.events.push_back(i);
          break;
        case EventRole::kPrompt:
          if (input.kind == Source::kNone) {
            if (const auto* v = event_attr(e, "gen_ai.prompt")) {
              input.kind = Source::kEventValue;
              input.value = v;
              events_used_[static_cast<size_t>(i)] = true;
            }
          }
          break;
        case EventRole::kCompletion:
          if (output.kind == Source::kNone) {
            if (const auto* v = event_attr(e, "gen_ai.completion")) {
              output.kind = Source::kEventValue;
              output.value = v;
              events_used_[static_cast<size_t>(i)] = true;
            }
          }
          break;
        case EventRole::kOther:
          if (exception == nullptr && e.name() == "exception") exception = &e;
          break;
      }
    }
    if (input.kind == Source::kNone && !in_events.events.empty()) {
      for (int i : in_events.events)
        events_used_[static_cast<size_t>(i)] = true;
      input = std::move(in_events);
    }
    if (output.kind == Source::kNone && !out_events.events.empty()) {
      for (int i : out_events.events)
        events_used_[static_cast<size_t>(i)] = true;
      output = std::move(out_events);
    }

    // The trace's context is taken off the span (see trace()).
    const pbc::AnyValue* conversation = value(kConversation);
    const pbc::AnyValue* session = value(kSession);
    const pbc::AnyValue* user = value(kUser);
    consume(kConversation);
    consume(kSession);
    consume(kUser);

    // The protocol's well-known attributes, unless the span has them itself.
    struct WellKnown {
      std::string_view key;
      const pbc::AnyValue* value = nullptr;
    };
    std::array<WellKnown, 4> known{
        {{"model"}, {"input_tokens"}, {"output_tokens"}, {"temperature"}}};
    auto well_known = [&](size_t slot, Attr plain, std::initializer_list<Attr> from) {
      if (at[plain] >= 0) return;
      for (Attr a : from) {
        if (const auto* v = value(a)) {
          known[slot].value = v;
          consume(a);
          return;
        }
      }
    };
    well_known(0, kPlainModel, {kModel, kModelOi});
    well_known(1, kPlainInputTokens, {kInputTokens, kInputTokensOi});
    well_known(2, kPlainOutputTokens, {kOutputTokens, kOutputTokensOi});
    well_known(3, kPlainTemperature, {kTemperature});

    const std::string_view type =
        otlp_event_type(any_string(value(kOperation)), any_string(value(kSpanKind)));

    std::string error_text;
    const bool is_error = span.status().code() == pbt::Status::STATUS_CODE_ERROR;
    if (is_error) {
      error_text = span.status().message();
      if (error_text.empty() && exception != nullptr) {
        const std::string_view etype = any_string(event_attr(*exception, "exception.type"));
        const std::string_view emsg = any_string(event_attr(*exception, "exception.message"));
        error_text = etype.empty() || emsg.empty() ? std::string(etype.empty() ? emsg : etype)
                                                   : fmt::format("{}: {}", etype, emsg);
      }
    }

    // attrs: what is left of the attributes, the well-known ones, the
    // instrumentation scope and the events that were not used.
    uint32_t kept = 0;
    for (bool c : consumed_)
      kept += c ? 0 : 1;
    uint32_t extra = 0;
    for (const auto& k : known)
      extra += k.value != nullptr ? 1 : 0;
    const bool scope_name = !scope.name().empty();
    const bool scope_version = !scope.version().empty();
    uint32_t unused_events = 0;
    for (bool u : events_used_)
      unused_events += u ? 0 : 1;
    const uint32_t attr_entries =
        kept + extra + (scope_name ? 1 : 0) + (scope_version ? 1 : 0) + (unused_events > 0 ? 1 : 0);

    std::string raw;
    raw.reserve(512);
    StringOut sink{&raw};
    Packer pk(sink);
    const bool has_parent = parent.size() == 8 && !all_zero(parent);
    const bool has_name = !span.name().empty();
    uint32_t keys = 5;  // v, kind, trace_id, id, type
    keys += has_parent ? 1 : 0;
    keys += has_name ? 1 : 0;
    keys += input.kind != Source::kNone ? 1 : 0;
    keys += output.kind != Source::kNone ? 1 : 0;
    keys += span.start_time_unix_nano() > 0 ? 1 : 0;
    keys += span.end_time_unix_nano() > 0 ? 1 : 0;
    const bool has_status = span.status().code() != pbt::Status::STATUS_CODE_UNSET;
    keys += has_status ? 1 : 0;
    keys += !error_text.empty() ? 1 : 0;
    keys += attr_entries > 0 ? 1 : 0;
    pk.pack_map(keys);
    pack_str(pk, "v");
    pk.pack_uint8(1);
    pack_str(pk, "kind");
    pack_str(pk, "event");
    const std::string trace_hex = to_hex(span.trace_id());
    pack_str(pk, "trace_id");
    pack_str(pk, trace_hex);
    pack_str(pk, "id");
    pack_str(pk, to_hex(span.span_id()));
    if (has_parent) {
      pack_str(pk, "parent_id");
      pack_str(pk, to_hex(parent));
    }
    pack_str(pk, "type");
    pack_str(pk, type);
    if (has_name) {
      pack_str(pk, "name");
      pack_str(pk, span.name());
    }
    if (input.kind != Source::kNone) {
      pack_str(pk, "input");
      pack_source(pk, input, span, true);
    }
    if (output.kind != Source::kNone) {
      pack_str(pk, "output");
      pack_source(pk, output, span, false);
    }
    if (span.start_time_unix_nano() > 0) {
      pack_str(pk, "ts");
      pk.pack_uint64(span.start_time_unix_nano());
    }
    if (span.end_time_unix_nano() > 0) {
      pack_str(pk, "end_ts");
      pk.pack_uint64(span.end_time_unix_nano());
    }
    if (has_status) {
      pack_str(pk, "status");
      pack_str(pk, is_error ? "error" : "ok");
    }
    if (!error_text.empty()) {
      pack_str(pk, "error");
      pack_str(pk, error_text);
    }
    if (attr_entries > 0) {
      pack_str(pk, "attrs");
      pk.pack_map(attr_entries);
      for (const auto& k : known) {
        if (k.value == nullptr) continue;
        pack_str(pk, k.key);
        pack_any(pk, *k.value);
      }
      if (scope_name) {
        pack_str(pk, "otel.scope.name");
        pack_str(pk, scope.name());
      }
      if (scope_version) {
        pack_str(pk, "otel.scope.version");
        pack_str(pk, scope.version());
      }
      for (int i = 0; i < n_attrs; ++i) {
        if (consumed_[static_cast<size_t>(i)]) continue;
        const auto& kv = span.attributes(i);
        pack_str(pk, kv.key());
        pack_any(pk, kv.value());
      }
      if (unused_events > 0) {
        pack_str(pk, "otel.events");
        pk.pack_array(unused_events);
        for (int i = 0; i < n_events; ++i) {
          if (events_used_[static_cast<size_t>(i)]) continue;
          const auto& e = span.events(i);
          pk.pack_map(3);
          pack_str(pk, "name");
          pack_str(pk, e.name());
          pack_str(pk, "ts");
          pk.pack_uint64(e.time_unix_nano());
          pack_str(pk, "attrs");
          pack_event_attrs(pk, e, {});
        }
      }
    }
    std::string why;
    if (!add(std::move(raw), &why)) return reject(span, why);
    // The last accepted span of the trace that gives each part of the
    // context wins.
    TraceContext& ctx = context(trace_hex);
    ctx.has_span = true;
    if (conversation) ctx.conversation = conversation;
    if (session) ctx.session = session;
    if (user) ctx.user = user;
  }

  void trace(const TraceContext& ctx,
             const google::protobuf::RepeatedPtrField<pbc::KeyValue>& resource) {
    std::string conversation = ctx.conversation ? any_text(*ctx.conversation) : std::string();
    std::string session = ctx.session ? any_text(*ctx.session) : std::string();
    std::string user = ctx.user ? any_text(*ctx.user) : std::string();
    uint32_t keys = 3;  // v, kind, trace_id
    keys += conversation.empty() ? 0 : 1;
    keys += session.empty() ? 0 : 1;
    keys += user.empty() ? 0 : 1;
    keys += resource.empty() ? 0 : 1;
    if (keys == 3) return;
    std::string raw;
    StringOut sink{&raw};
    Packer pk(sink);
    pk.pack_map(keys);
    pack_str(pk, "v");
    pk.pack_uint8(1);
    pack_str(pk, "kind");
    pack_str(pk, "trace");
    pack_str(pk, "trace_id");
    pack_str(pk, ctx.trace_id);
    if (!conversation.empty()) {
      pack_str(pk, "conversation_id");
      pack_str(pk, conversation);
    }
    if (!session.empty()) {
      pack_str(pk, "session_id");
      pack_str(pk, session);
    }
    if (!user.empty()) {
      pack_str(pk, "user");
      pk.pack_map(1);
      pack_str(pk, "id");
      pack_str(pk, user);
    }
    if (!resource.empty()) {
      pack_str(pk, "metadata");
      pk.pack_map(static_cast<uint32_t>(resource.size()));
      for (const auto& kv : resource) {
        pack_str(pk, kv.key());
        pack_any(pk, kv.value());
      }
    }
    std::string why;
    if (!add(std::move(raw), &why)) {
      note(
          fmt::format("trace {}: its context (resource attributes, conversation, session, user) "
                      "was not kept: {}",
                      ctx.trace_id, why));
    }
  }

  const DecodeLimits& limits_;
  const uint64_t recv_ns_;
  OtlpMapped* out_;
  const size_t max_weight_;
  std::vector<TraceContext> contexts_;
  std::unordered_map<std::string, size_t> index_;
  std::vector<bool> consumed_;     // per attribute of the current span
  std::vector<bool> events_used_;  // per event of the current span
  int reasons_ = 0;
  uint64_t more_reasons_ = 0;
};

// ---------------------------------------------------------------------------
// JSON ids

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string base64(std::string_view in) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const uint32_t v = static_cast<uint8_t>(in[i]) << 16 | static_cast<uint8_t>(in[i + 1]) << 8 |
                       static_cast<uint8_t>(in[i + 2]);
    out += kAlphabet[v >> 18];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  if (i + 1 == in.size()) {
    const uint32_t v = static_cast<uint8_t>(in[i]) << 16;
    out += kAlphabet[v >> 18];
    out += kAlphabet[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == in.size()) {
    const uint32_t v = static_cast<uint8_t>(in[i]) << 16 | static_cast<uint8_t>(in[i + 1]) << 8;
    out += kAlphabet[v >> 18];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

// A hex id as protobuf's JSON mapping reads bytes (base64). A value that is
// not hex is left as it is: protobuf then reads it as base64, as some older
// exporters sent ids.
void hex_id_to_base64(json& obj, std::initializer_list<const char*> names) {
  for (const char* name : names) {
    auto it = obj.find(name);
    if (it == obj.end() || !it->is_string()) continue;
    const std::string& hex = it->get_ref<const std::string&>();
    if (hex.size() % 2 != 0) continue;
    std::string bytes;
    bytes.reserve(hex.size() / 2);
    bool ok = true;
    for (size_t i = 0; i < hex.size(); i += 2) {
      const int hi = hex_digit(hex[i]), lo = hex_digit(hex[i + 1]);
      if (hi < 0 || lo < 0) {
        ok = false;
        break;
      }
      bytes.push_back(static_cast<char>(hi << 4 | lo));
    }
    if (ok) *it = base64(bytes);
  }
}

json* array_of(json& obj, const char* camel, const char* snake) {
  if (!obj.is_object()) return nullptr;
  for (const char* name : {camel, snake}) {
    auto it = obj.find(name);
    if (it != obj.end() && it->is_array()) return &*it;
  }
  return nullptr;
}

}  // namespace

std::string to_hex(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(bytes.size() * 2, '0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    const auto b = static_cast<uint8_t>(bytes[i]);
    out[2 * i] = kHex[b >> 4];
    out[2 * i + 1] = kHex[b & 15];
  }
  return out;
}

std::string_view otlp_event_type(std::string_view operation, std::string_view kind) {
  if (!operation.empty()) {
    if (operation == "chat" || operation == "text_completion" || operation == "generate_content") {
      return "GENERATION";
    }
    if (operation == "execute_tool") return "TOOL";
    if (operation == "invoke_agent" || operation == "create_agent") return "AGENT";
    if (operation == "retrieval") return "RETRIEVAL";
    return "CUSTOM";
  }
  if (!kind.empty()) {
    if (kind == "LLM") return "GENERATION";
    if (kind == "TOOL") return "TOOL";
    if (kind == "AGENT") return "AGENT";
    if (kind == "RETRIEVER") return "RETRIEVAL";
    return "CUSTOM";
  }
  return "SYSTEM";
}

bool parse_otlp_protobuf(std::string_view body, OtlpRequest* out, std::string* error) {
  if (body.size() > static_cast<size_t>(INT32_MAX) ||
      !out->ParseFromArray(body.data(), static_cast<int>(body.size()))) {
    *error = "the body is not a protobuf ExportTraceServiceRequest";
    return false;
  }
  return true;
}

bool parse_otlp_json(std::string_view body, OtlpRequest* out, std::string* error) {
  json doc = json::parse(body.begin(), body.end(), nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) {
    *error = "the body is not a JSON object";
    return false;
  }
  if (json* rss = array_of(doc, "resourceSpans", "resource_spans")) {
    for (json& rs : *rss) {
      json* sss = array_of(rs, "scopeSpans", "scope_spans");
      if (sss == nullptr) continue;
      for (json& ss : *sss) {
        json* spans = array_of(ss, "spans", "spans");
        if (spans == nullptr) continue;
        for (json& span : *spans) {
          if (!span.is_object()) continue;
          hex_id_to_base64(
              span, {"traceId", "trace_id", "spanId", "span_id", "parentSpanId", "parent_span_id"});
          if (json* links = array_of(span, "links", "links")) {
            for (json& link : *links) {
              if (link.is_object()) {
                hex_id_to_base64(link, {"traceId", "trace_id", "spanId", "span_id"});
              }
            }
          }
        }
      }
    }
  }
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;
  const auto status = google::protobuf::util::JsonStringToMessage(
      doc.dump(-1, ' ', false, json::error_handler_t::replace), out, options);
  if (!status.ok()) {
    *error = "the body is not an OTLP JSON ExportTraceServiceRequest: " + status.ToString();
    return false;
  }
  return true;
}

void map_otlp_request(const OtlpRequest& request, const DecodeLimits& limits, uint64_t recv_ns,
                      OtlpMapped* out, size_t max_weight) {
  Mapper mapper(limits, recv_ns, out, max_weight);
  size_t spans = 0;
  for (const auto& rs : request.resource_spans()) {
    for (const auto& ss : rs.scope_spans())
      spans += static_cast<size_t>(ss.spans_size());
  }
  // An event per span, and a trace context for some.
  out->messages.reserve(out->messages.size() + spans + spans / 4 + 1);
  for (const auto& rs : request.resource_spans()) {
    if (!mapper.resource(rs)) break;
  }
  mapper.finish();
}

}  // namespace sidetrace::ipc

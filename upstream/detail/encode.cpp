#include "upstream/detail/encode.h"

#include <openssl/evp.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cctype>
#include <limits>
#include <nlohmann/json.hpp>
#include <unordered_set>

namespace sidetrace::upstream::detail {

using nlohmann::json;

void append_native_body(std::span<const std::string_view> docs, std::string* out) {
  size_t total = 14;
  for (auto d : docs)
    total += d.size() + 1;
  out->reserve(out->size() + total);
  out->append("{\"traces\":[");
  for (size_t i = 0; i < docs.size(); ++i) {
    if (i > 0) out->push_back(',');
    out->append(docs[i]);
  }
  out->append("]}");
}

std::string otlp_id(std::string_view id, size_t hex_len) {
  bool hex = id.size() == hex_len && !id.empty();
  bool nonzero = false;
  for (char c : id) {
    if (!std::isxdigit(static_cast<unsigned char>(c))) hex = false;
    if (c != '0') nonzero = true;
  }
  std::string out;
  if (hex && nonzero) {
    out.assign(id);
    for (char& c : out)
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  EVP_Digest(id.data(), id.size(), md, &md_len, EVP_sha256(), nullptr);
  static constexpr char kHex[] = "0123456789abcdef";
  for (size_t i = 0; i < hex_len / 2 && i < md_len; ++i) {
    out.push_back(kHex[md[i] >> 4]);
    out.push_back(kHex[md[i] & 15]);
  }
  return out;
}

namespace {

std::string str_or_empty(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return {};
  return it->get<std::string>();
}

uint64_t u64_or(const json& j, const char* key, uint64_t dflt) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return dflt;
  if (it->is_number_unsigned()) return it->get<uint64_t>();
  if (it->is_number_integer())
    return static_cast<uint64_t>(std::max<int64_t>(0, it->get<int64_t>()));
  return static_cast<uint64_t>(std::max(0.0, it->get<double>()));
}

bool is_scalar(const json& v) {
  return v.is_string() || v.is_boolean() || v.is_number();
}

// OTLP AnyValue for a JSON value; false for null (attribute omitted). An
// array of scalars is an arrayValue, as OpenTelemetry's attribute arrays
// are; other arrays and maps are written as JSON text.
bool any_value(const json& v, json* out) {
  if (v.is_null()) return false;
  if (v.is_array() && std::all_of(v.begin(), v.end(), is_scalar)) {
    json values = json::array();
    for (const json& e : v) {
      json ev;
      any_value(e, &ev);
      values.push_back(std::move(ev));
    }
    *out = {{"arrayValue", {{"values", std::move(values)}}}};
  } else if (v.is_string()) {
    *out = {{"stringValue", v}};
  } else if (v.is_boolean()) {
    *out = {{"boolValue", v}};
  } else if (v.is_number_unsigned()) {
    *out = {{"intValue", std::to_string(v.get<uint64_t>())}};
  } else if (v.is_number_integer()) {
    *out = {{"intValue", std::to_string(v.get<int64_t>())}};
  } else if (v.is_number_float()) {
    *out = {{"doubleValue", v}};
  } else {
    *out = {{"stringValue", v.dump()}};
  }
  return true;
}

void add_attr(json& attrs, std::string key, const json& v) {
  json av;
  if (!any_value(v, &av)) return;
  attrs.push_back({{"key", std::move(key)}, {"value", std::move(av)}});
}

// Sets `key` to `v`, replacing an attribute of that key added before.
void set_attr(json& attrs, const std::string& key, const json& v) {
  json av;
  if (!any_value(v, &av)) return;
  for (auto& a : attrs) {
    if (a["key"] == key) {
      a["value"] = std::move(av);
      return;
    }
  }
  attrs.push_back({{"key", key}, {"value", std::move(av)}});
}

void add_str(json& attrs, std::string key, const std::string& v) {
  if (v.empty()) return;
  attrs.push_back({{"key", std::move(key)}, {"value", {{"stringValue", v}}}});
}

// A value as text: strings verbatim, everything else as JSON.
std::string as_text(const json& v) {
  return v.is_string() ? v.get<std::string>() : v.dump();
}

const char* openinference_kind(const std::string& type) {
  if (type == "TOOL") return "TOOL";
  if (type == "GENERATION") return "LLM";
  if (type == "AGENT") return "AGENT";
  if (type == "RETRIEVAL") return "RETRIEVER";
  return "CHAIN";  // MESSAGE, ROUTER and everything else
}

const char* genai_operation(const std::string& type) {
  if (type == "GENERATION") return "chat";
  if (type == "TOOL") return "execute_tool";
  if (type == "AGENT") return "invoke_agent";
  if (type == "RETRIEVAL") return "retrieval";
  return nullptr;
}

struct TraceContext {
  std::string trace_id_hex;
  std::unordered_set<std::string> event_ids;  // every event of the document
  std::string conversation_id;
  std::string session_id;
  std::string user_id;
  std::string metadata;  // JSON text
  json revision;
};

void add_feedback(json& span, const json& fb) {
  json ev;
  ev["timeUnixNano"] = std::to_string(u64_or(fb, "ts", 0));
  ev["name"] = "feedback";
  json attrs = json::array();
  std::string tag = str_or_empty(fb, "tag");
  add_str(attrs, "feedback.tag", tag);
  if (fb.contains("text")) add_attr(attrs, "feedback.text", fb["text"]);
  if (fb.contains("score")) add_attr(attrs, "feedback.score", fb["score"]);
  ev["attributes"] = std::move(attrs);
  span["events"].push_back(std::move(ev));
  // Annotation attributes: the latest feedback per tag wins.
  std::string base = "annotation." + (tag.empty() ? std::string("feedback") : tag);
  json& sattrs = span["attributes"];
  auto set = [&](const std::string& key, const json& v) {
    for (auto& a : sattrs) {
      if (a["key"] == key) {
        json av;
        if (any_value(v, &av)) a["value"] = std::move(av);
        return;
      }
    }
    add_attr(sattrs, key, v);
  };
  if (fb.contains("score")) set(base + ".score", fb["score"]);
  if (fb.contains("text")) set(base + ".text", fb["text"]);
}

void add_spans(const json& events, const std::string& parent_hex, const TraceContext& ctx,
               json& spans, std::vector<std::pair<std::string, size_t>>& index) {
  if (!events.is_array()) return;
  for (const json& e : events) {
    if (!e.is_object()) continue;
    std::string id = str_or_empty(e, "id");
    std::string type = str_or_empty(e, "type");
    std::string name = str_or_empty(e, "name");
    json span;
    span["traceId"] = ctx.trace_id_hex;
    std::string span_hex = otlp_id(id, 16);
    span["spanId"] = span_hex;
    if (!parent_hex.empty()) {
      span["parentSpanId"] = parent_hex;
    } else if (std::string parent = str_or_empty(e, "parent_id");
               !parent.empty() && !ctx.event_ids.contains(parent)) {
      // An orphan whose parent is elsewhere (another service's span, or one
      // not received yet) keeps it, so that the backend can join them.
      span["parentSpanId"] = otlp_id(parent, 16);
    }
    span["name"] = name.empty() ? (type.empty() ? std::string("event") : type) : name;
    span["kind"] = type == "GENERATION" || type == "RETRIEVAL" ? 3 : 1;  // CLIENT : INTERNAL
    uint64_t start = u64_or(e, "start_ts", 0);
    uint64_t end = u64_or(e, "end_ts", start);
    span["startTimeUnixNano"] = std::to_string(start);
    span["endTimeUnixNano"] = std::to_string(end);
    json attrs = json::array();
    add_str(attrs, "openinference.span.kind", openinference_kind(type));
    if (const char* op = genai_operation(type)) add_str(attrs, "gen_ai.operation.name", op);
    add_str(attrs, "sidetrace.event.id", id);
    add_str(attrs, "sidetrace.event.type", type);
    add_attr(attrs, "sidetrace.trace.revision", ctx.revision);
    add_str(attrs, "gen_ai.conversation.id", ctx.conversation_id);
    add_str(attrs, "session.id", ctx.session_id);
    add_str(attrs, "user.id", ctx.user_id);
    add_str(attrs, "metadata", ctx.metadata);
    for (const char* io : {"input", "output"}) {
      auto it = e.find(io);
      if (it == e.end() || it->is_null()) continue;
      std::string key = std::string(io);
      add_str(attrs, key + ".value", as_text(*it));
      add_str(attrs, key + ".mime_type", it->is_string() ? "text/plain" : "application/json");
    }
    if (e.value("orphan", false)) add_attr(attrs, "sidetrace.orphan", true);
    if (e.value("unfinished", false)) add_attr(attrs, "sidetrace.unfinished", true);
    // A key with a dot is an OpenTelemetry name (such as the attributes of
    // spans taken in over OTLP): it goes out as it is, over an attribute of
    // that name derived above. Keys without a dot are the event's own.
    auto at = e.find("attrs");
    if (at != e.end() && at->is_object()) {
      for (auto& [k, v] : at->items()) {
        if (k == "model") {
          set_attr(attrs, "gen_ai.request.model", v);
          set_attr(attrs, "llm.model_name", v);
        } else if (k == "input_tokens") {
          set_attr(attrs, "gen_ai.usage.input_tokens", v);
          set_attr(attrs, "llm.token_count.prompt", v);
        } else if (k == "output_tokens") {
          set_attr(attrs, "gen_ai.usage.output_tokens", v);
          set_attr(attrs, "llm.token_count.completion", v);
        } else if (k == "temperature") {
          set_attr(attrs, "gen_ai.request.temperature", v);
        } else if (k.find('.') != std::string::npos) {
          set_attr(attrs, k, v);
        } else {
          set_attr(attrs, "sidetrace.attr." + k, v);
        }
      }
    }
    span["attributes"] = std::move(attrs);
    span["events"] = json::array();
    std::string status = str_or_empty(e, "status");
    json st = json::object();
    if (e.value("unfinished", false)) {
      st["code"] = 0;  // UNSET
    } else if (status == "error") {
      st["code"] = 2;  // ERROR
      std::string err = str_or_empty(e, "error");
      if (!err.empty()) st["message"] = err;
    } else {
      st["code"] = 1;  // OK
    }
    span["status"] = std::move(st);
    index.emplace_back(id, spans.size());
    spans.push_back(std::move(span));
    auto ch = e.find("children");
    if (ch != e.end()) add_spans(*ch, span_hex, ctx, spans, index);
  }
}

void collect_ids(const json& events, std::unordered_set<std::string>& ids) {
  if (!events.is_array()) return;
  for (const json& e : events) {
    if (!e.is_object()) continue;
    if (std::string id = str_or_empty(e, "id"); !id.empty()) ids.insert(std::move(id));
    if (auto ch = e.find("children"); ch != e.end()) collect_ids(*ch, ids);
  }
}

json otlp_resource_spans(const json& doc) {
  TraceContext ctx;
  std::string trace_id = str_or_empty(doc, "trace_id");
  ctx.trace_id_hex = otlp_id(trace_id, 32);
  ctx.conversation_id = str_or_empty(doc, "conversation_id");
  ctx.session_id = str_or_empty(doc, "session_id");
  auto user = doc.find("user");
  if (user != doc.end() && user->is_object()) {
    auto uid = user->find("id");
    if (uid != user->end() && !uid->is_null()) ctx.user_id = as_text(*uid);
  }
  auto md = doc.find("metadata");
  if (md != doc.end() && !md->is_null()) ctx.metadata = md->dump();
  ctx.revision = doc.contains("revision") ? doc["revision"] : json(nullptr);

  json spans = json::array();
  std::vector<std::pair<std::string, size_t>> index;
  auto evs = doc.find("events");
  if (evs != doc.end()) collect_ids(*evs, ctx.event_ids);
  if (evs != doc.end()) add_spans(*evs, "", ctx, spans, index);
  if (spans.empty()) {
    // A trace without events (feedback only): one synthetic root span.
    json span;
    span["traceId"] = ctx.trace_id_hex;
    span["spanId"] = otlp_id("trace:" + trace_id, 16);
    span["name"] = "trace";
    span["kind"] = 1;
    span["startTimeUnixNano"] = std::to_string(u64_or(doc, "start_ts", 0));
    span["endTimeUnixNano"] = std::to_string(u64_or(doc, "end_ts", u64_or(doc, "start_ts", 0)));
    json attrs = json::array();
    add_str(attrs, "openinference.span.kind", "CHAIN");
    add_attr(attrs, "sidetrace.trace.revision", ctx.revision);
    span["attributes"] = std::move(attrs);
    span["events"] = json::array();
    span["status"] = {{"code", 0}};
    spans.push_back(std::move(span));
  }
  auto fbs = doc.find("feedback");
  if (fbs != doc.end() && fbs->is_array()) {
    for (const json& fb : *fbs) {
      if (!fb.is_object()) continue;
      size_t target = 0;  // the first root span
      std::string tid = str_or_empty(fb, "target_id");
      if (!tid.empty()) {
        for (auto& [id, pos] : index) {
          if (id == tid) {
            target = pos;
            break;
          }
        }
      }
      add_feedback(spans[target], fb);
    }
  }

  json rattrs = json::array();
  add_str(rattrs, "service.name", "sidetrace");
  add_str(rattrs, "sidetrace.trace_id", trace_id);
  add_attr(rattrs, "sidetrace.trace.revision", ctx.revision);
  add_str(rattrs, "sidetrace.trace.status", str_or_empty(doc, "status"));
  if (doc.value("partial", false)) add_attr(rattrs, "sidetrace.trace.partial", true);
  if (auto p = doc.find("part"); p != doc.end() && p->is_number_unsigned()) {
    add_attr(rattrs, "sidetrace.trace.part", p->get<uint64_t>());
  }
  add_str(rattrs, "sidetrace.interaction_id", str_or_empty(doc, "interaction_id"));
  add_str(rattrs, "sidetrace.channel_id", str_or_empty(doc, "channel_id"));
  add_str(rattrs, "gen_ai.conversation.id", ctx.conversation_id);
  add_str(rattrs, "session.id", ctx.session_id);
  add_str(rattrs, "user.id", ctx.user_id);

  json scope = {{"scope", {{"name", "sidetrace"}, {"version", "1"}}}, {"spans", std::move(spans)}};
  return {{"resource", {{"attributes", std::move(rattrs)}}},
          {"scopeSpans", json::array({std::move(scope)})}};
}

}  // namespace

bool append_otlp_body(std::span<const std::string_view> docs, std::string* out,
                      std::string* error) {
  json rs = json::array();
  for (auto d : docs) {
    json doc = json::parse(d, nullptr, false);
    if (doc.is_discarded() || !doc.is_object()) {
      *error = "trace document is not a JSON object";
      return false;
    }
    rs.push_back(otlp_resource_spans(doc));
  }
  json body = {{"resourceSpans", std::move(rs)}};
  out->append(body.dump(-1, ' ', false, json::error_handler_t::replace));
  return true;
}

std::string_view content_encoding(Compression c) {
  switch (c) {
    case Compression::kGzip:
      return "gzip";
    case Compression::kZstd:
      return "zstd";
    case Compression::kNone:
      break;
  }
  return {};
}

static_assert(kZlibMaxChunk <= std::numeric_limits<uInt>::max());

struct BodyEncoder::State {
  Compression c = Compression::kNone;
  std::string* out = nullptr;
  size_t used = 0;  // bytes of *out written (kGzip, kZstd)
  size_t zlib_chunk = kZlibMaxChunk;
  bool failed = false;
  z_stream zs{};
  bool zs_ready = false;
  int zs_level = 0;
  ZSTD_CCtx* zc = nullptr;

  ~State() {
    if (zs_ready) deflateEnd(&zs);
    ZSTD_freeCCtx(zc);
  }

  // Makes room after `used` in *out: first its whole capacity, then double.
  void grow() {
    size_t want = std::max({out->capacity(), out->size() * 2, size_t{64} << 10});
    out->resize(want);
  }

  // One deflate() call over the room after `used` (at most zlib_chunk of
  // it, growing *out when it is full); advances `used`.
  int deflate_step(int flush) {
    if (used == out->size()) grow();
    zs.next_out = reinterpret_cast<Bytef*>(out->data() + used);
    zs.avail_out = static_cast<uInt>(std::min(out->size() - used, zlib_chunk));
    int rc = deflate(&zs, flush);
    used = static_cast<size_t>(reinterpret_cast<char*>(zs.next_out) - out->data());
    return rc;
  }
};

BodyEncoder::BodyEncoder(size_t zlib_chunk) : s_(std::make_unique<State>()) {
  s_->zlib_chunk = std::clamp<size_t>(zlib_chunk, 1, kZlibMaxChunk);
}
BodyEncoder::~BodyEncoder() = default;

bool BodyEncoder::begin(Compression c, int level, std::string* out) {
  State& s = *s_;
  s.c = c;
  s.out = out;
  s.used = 0;
  s.failed = false;
  out->clear();
  if (c == Compression::kGzip) {
    level = std::clamp(level, 1, 9);
    if (s.zs_ready && s.zs_level == level) {
      if (deflateReset(&s.zs) != Z_OK) return false;
    } else {
      if (s.zs_ready) deflateEnd(&s.zs);
      s.zs = z_stream{};
      s.zs_ready = deflateInit2(&s.zs, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK;
      if (!s.zs_ready) return false;
      s.zs_level = level;
    }
  } else if (c == Compression::kZstd) {
    if (s.zc == nullptr) s.zc = ZSTD_createCCtx();
    if (s.zc == nullptr) return false;
    ZSTD_CCtx_reset(s.zc, ZSTD_reset_session_and_parameters);
    if (ZSTD_isError(ZSTD_CCtx_setParameter(s.zc, ZSTD_c_compressionLevel, level))) return false;
  }
  return true;
}

bool BodyEncoder::add(std::string_view piece) {
  State& s = *s_;
  if (s.failed) return false;
  switch (s.c) {
    case Compression::kNone:
      s.out->append(piece);
      return true;
    case Compression::kGzip: {
      // The piece goes to zlib in chunks of at most zlib_chunk bytes.
      size_t given = 0;
      s.zs.avail_in = 0;
      while (given < piece.size() || s.zs.avail_in > 0) {
        if (s.zs.avail_in == 0) {
          size_t n = std::min(piece.size() - given, s.zlib_chunk);
          s.zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(piece.data() + given));
          s.zs.avail_in = static_cast<uInt>(n);
          given += n;
        }
        int rc = s.deflate_step(Z_NO_FLUSH);
        if (rc != Z_OK && rc != Z_BUF_ERROR) {
          s.failed = true;
          return false;
        }
      }
      return true;
    }
    case Compression::kZstd: {
      ZSTD_inBuffer in{piece.data(), piece.size(), 0};
      while (in.pos < in.size) {
        if (s.used == s.out->size()) s.grow();
        ZSTD_outBuffer ob{s.out->data(), s.out->size(), s.used};
        size_t rc = ZSTD_compressStream2(s.zc, &ob, &in, ZSTD_e_continue);
        s.used = ob.pos;
        if (ZSTD_isError(rc)) {
          s.failed = true;
          return false;
        }
      }
      return true;
    }
  }
  return false;
}

bool BodyEncoder::finish() {
  State& s = *s_;
  if (s.failed) return false;
  if (s.c == Compression::kGzip) {
    s.zs.next_in = nullptr;
    s.zs.avail_in = 0;
    for (;;) {
      int rc = s.deflate_step(Z_FINISH);
      if (rc == Z_STREAM_END) break;
      if (rc != Z_OK && rc != Z_BUF_ERROR) return false;
    }
    s.out->resize(s.used);
  } else if (s.c == Compression::kZstd) {
    ZSTD_inBuffer in{nullptr, 0, 0};
    for (;;) {
      if (s.used == s.out->size()) s.grow();
      ZSTD_outBuffer ob{s.out->data(), s.out->size(), s.used};
      size_t rc = ZSTD_compressStream2(s.zc, &ob, &in, ZSTD_e_end);
      s.used = ob.pos;
      if (ZSTD_isError(rc)) return false;
      if (rc == 0) break;
    }
    s.out->resize(s.used);
  }
  return true;
}

bool BodyEncoder::native(Compression c, int level, std::span<const std::string_view> docs,
                         std::string* out) {
  if (!begin(c, level, out)) return false;
  if (c == Compression::kNone) {
    append_native_body(docs, out);
    return true;
  }
  add("{\"traces\":[");
  for (size_t i = 0; i < docs.size(); ++i) {
    if (i > 0) add(",");
    add(docs[i]);
  }
  add("]}");
  return finish();
}

bool BodyEncoder::compress(Compression c, int level, std::string_view in, std::string* out) {
  if (!begin(c, level, out)) return false;
  add(in);
  return finish();
}

bool compress(Compression c, int level, std::string_view in, std::string* out) {
  BodyEncoder e;
  if (!e.compress(c, level, in, out)) return false;
  // The body is held while the batch is in flight: not at the size of the
  // output buffer's last doubling.
  out->shrink_to_fit();
  return true;
}

bool decompress(Compression c, std::string_view in, std::string* out, size_t limit,
                size_t zlib_chunk) {
  out->clear();
  if (c == Compression::kNone) {
    if (in.size() > limit) return false;
    out->assign(in);
    return true;
  }
  if (c == Compression::kZstd) {
    ZSTD_DCtx* dctx = ZSTD_createDCtx();
    ZSTD_inBuffer ib{in.data(), in.size(), 0};
    char buf[65536];
    size_t rc = 1;
    while (ib.pos < ib.size || rc != 0) {
      ZSTD_outBuffer ob{buf, sizeof(buf), 0};
      rc = ZSTD_decompressStream(dctx, &ob, &ib);
      if (ZSTD_isError(rc) || out->size() + ob.pos > limit) {
        ZSTD_freeDCtx(dctx);
        return false;
      }
      out->append(buf, ob.pos);
      if (ob.pos == 0 && ib.pos == ib.size) break;
    }
    ZSTD_freeDCtx(dctx);
    return rc == 0;
  }
  z_stream zs{};
  if (inflateInit2(&zs, 15 + 32) != Z_OK) return false;
  zlib_chunk = std::clamp<size_t>(zlib_chunk, 1, kZlibMaxChunk);
  size_t given = 0;  // bytes of `in` handed to zlib, in chunks of zlib_chunk
  char buf[65536];
  int rc = Z_OK;
  while (rc == Z_OK) {
    if (zs.avail_in == 0 && given < in.size()) {
      size_t n = std::min(in.size() - given, zlib_chunk);
      zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data() + given));
      zs.avail_in = static_cast<uInt>(n);
      given += n;
    }
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = static_cast<uInt>(std::min(sizeof(buf), zlib_chunk));
    uInt room = zs.avail_out;
    rc = inflate(&zs, Z_NO_FLUSH);
    size_t n = room - zs.avail_out;
    if ((rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) || out->size() + n > limit) {
      inflateEnd(&zs);
      return false;
    }
    out->append(buf, n);
    if (rc == Z_BUF_ERROR) {
      // No progress was possible: the input given ran out before the stream
      // ended. Only more input can help.
      if (zs.avail_in > 0 || given == in.size()) break;
      rc = Z_OK;
    }
    if (rc == Z_OK && n == 0 && zs.avail_in == 0 && given == in.size()) break;
  }
  inflateEnd(&zs);
  return rc == Z_STREAM_END;
}

namespace {

void find_largest(json& events, json** best, size_t* best_size) {
  if (!events.is_array()) return;
  for (json& e : events) {
    if (!e.is_object()) continue;
    for (const char* io : {"input", "output"}) {
      auto it = e.find(io);
      if (it == e.end() || it->is_null()) continue;
      if (it->is_string() && it->get_ref<const std::string&>().starts_with("[truncated ")) continue;
      size_t n = it->dump().size();
      if (n > *best_size) {
        *best_size = n;
        *best = &*it;
      }
    }
    auto ch = e.find("children");
    if (ch != e.end()) find_largest(*ch, best, best_size);
  }
}

}  // namespace

bool truncate_largest_field(std::string* doc) {
  json j = json::parse(*doc, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return false;
  auto evs = j.find("events");
  if (evs == j.end()) return false;
  json* best = nullptr;
  size_t best_size = 0;
  find_largest(*evs, &best, &best_size);
  std::string marker = "[truncated " + std::to_string(best_size) + " bytes]";
  if (best == nullptr || best_size <= marker.size() + 2) return false;
  *best = marker;
  *doc = j.dump(-1, ' ', false, json::error_handler_t::replace);
  return true;
}

size_t count_events(std::string_view doc) {
  static constexpr std::string_view kKey = "\"children\":[";
  size_t n = 0;
  for (size_t pos = doc.find(kKey); pos != std::string_view::npos;
       pos = doc.find(kKey, pos + kKey.size())) {
    ++n;
  }
  return n;
}

}  // namespace sidetrace::upstream::detail

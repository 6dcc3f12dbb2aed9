#include "agent/viewer.h"

#include <algorithm>
#include <charconv>
#include <nlohmann/json.hpp>
#include <string_view>
#include <utility>

#include "viewer_ui_page.h"  // generated from agent/ui/index.html

namespace sidetrace::agent {

namespace {

using json = nlohmann::json;

constexpr size_t kEntryOverhead = 256;  // bookkeeping per entry, for the byte bound
constexpr size_t kMaxLimit = 1000;

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string string_at(const json& j, const char* key) {
  auto it = j.find(key);
  if (it != j.end() && it->is_string()) return it->get<std::string>();
  return {};
}

// A value as text: strings as they are, anything else as compact JSON, null
// as nothing.
std::string value_text(const json& j) {
  if (j.is_null()) return {};
  if (j.is_string()) return j.get<std::string>();
  return dump(j);
}

void to_lower_ascii(std::string* s) {
  for (char& c : *s) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
}

// At most `max` bytes of `s`, cut at a UTF-8 character boundary, with an
// ellipsis when cut.
std::string preview(const std::string& s, size_t max) {
  if (s.size() <= max) return s;
  size_t n = max;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80)
    --n;
  return s.substr(0, n) + "\xE2\x80\xA6";
}

json summary_object(const TraceSummary& s) {
  json o = json::object();
  o["seq"] = s.seq;
  o["trace_id"] = s.trace_id;
  o["revision"] = s.revision;
  o["start_ts"] = s.start_ts ? json(*s.start_ts) : json(nullptr);
  o["duration_ms"] = s.duration_ms ? json(*s.duration_ms) : json(nullptr);
  o["status"] = s.status;
  o["partial"] = s.partial;
  o["conversation_id"] = s.conversation_id;
  o["session_id"] = s.session_id;
  o["user_id"] = s.user_id;
  o["root_type"] = s.root_type;
  o["root_name"] = s.root_name;
  o["input_preview"] = s.input_preview;
  o["events"] = s.events;
  o["errors"] = s.errors;
  o["feedback"] = s.feedback;
  return o;
}

AdminResponse json_response(unsigned status, std::string body) {
  AdminResponse r;
  r.status = status;
  r.content_type = "application/json";
  r.body = std::move(body);
  return r;
}

AdminResponse json_error(unsigned status, const std::string& message) {
  return json_response(status, dump(json{{"error", message}}) + "\n");
}

bool parse_uint(const std::string& s, uint64_t* out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size();
}

// Parses the query string into `q`; false with `error` set on a bad value.
bool parse_query(const std::string& query, TraceQuery* q, std::string* error) {
  size_t pos = 0;
  while (pos <= query.size()) {
    size_t amp = query.find('&', pos);
    if (amp == std::string::npos) amp = query.size();
    std::string part = query.substr(pos, amp - pos);
    pos = amp + 1;
    if (part.empty()) continue;
    size_t eq = part.find('=');
    std::string key, value;
    if (!url_decode(part.substr(0, eq), &key) ||
        !url_decode(eq == std::string::npos ? std::string() : part.substr(eq + 1), &value)) {
      *error = "malformed percent-encoding in the query string";
      return false;
    }
    if (key == "q") {
      q->q = value;
    } else if (key == "session") {
      q->session = value;
    } else if (key == "conversation") {
      q->conversation = value;
    } else if (key == "user") {
      q->user = value;
    } else if (key == "errors") {
      q->errors_only = value == "1" || value == "true";
    } else if (key == "limit" || key == "since") {
      uint64_t v = 0;
      if (!parse_uint(value, &v)) {
        *error = key + " must be a non-negative integer";
        return false;
      }
      if (key == "limit") {
        q->limit = static_cast<size_t>(std::min<uint64_t>(v, kMaxLimit));
      } else {
        q->since = v;
      }
    }
    // Unknown parameters are ignored.
  }
  return true;
}

// Fills the summary fields and the lowercase search text of a document;
// false when it is not a JSON object.
bool summarise(const std::string& document, TraceSummary* summary, std::string* haystack) {
  json doc = json::parse(document, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) return false;
  TraceSummary& s = *summary;
  if (auto it = doc.find("start_ts"); it != doc.end() && it->is_number_integer())
    s.start_ts = it->get<uint64_t>();
  if (auto it = doc.find("duration_ms"); it != doc.end() && it->is_number())
    s.duration_ms = it->get<double>();
  s.status = string_at(doc, "status");
  if (auto it = doc.find("partial"); it != doc.end() && it->is_boolean())
    s.partial = it->get<bool>();
  s.conversation_id = string_at(doc, "conversation_id");
  s.session_id = string_at(doc, "session_id");
  if (auto it = doc.find("user"); it != doc.end() && it->is_object()) {
    s.user_id = string_at(*it, "id");
  }
  if (auto it = doc.find("feedback"); it != doc.end() && it->is_array()) {
    s.feedback = it->size();
  }

  std::string& hay = *haystack;
  for (const std::string* field : {&s.trace_id, &s.session_id, &s.conversation_id, &s.user_id}) {
    hay += *field;
    hay += '\n';
  }
  // Walk every event without recursion: documents may nest deeply.
  std::vector<const json*> stack;
  if (auto it = doc.find("events"); it != doc.end() && it->is_array()) {
    if (!it->empty()) {
      const json& root = it->front();
      if (root.is_object()) {
        s.root_type = string_at(root, "type");
        s.root_name = string_at(root, "name");
        if (auto in = root.find("input"); in != root.end()) {
          s.input_preview = preview(value_text(*in), TraceSummary::kPreviewBytes);
        }
      }
    }
    for (auto e = it->rbegin(); e != it->rend(); ++e)
      stack.push_back(&*e);
  }
  while (!stack.empty()) {
    const json& ev = *stack.back();
    stack.pop_back();
    if (!ev.is_object()) continue;
    ++s.events;
    if (string_at(ev, "status") == "error") ++s.errors;
    for (const char* key : {"name", "type", "error"}) {
      hay += string_at(ev, key);
      hay += '\n';
    }
    for (const char* key : {"input", "output"}) {
      if (auto it = ev.find(key); it != ev.end()) {
        hay += value_text(*it);
        hay += '\n';
      }
    }
    if (auto it = ev.find("children"); it != ev.end() && it->is_array()) {
      for (auto c = it->rbegin(); c != it->rend(); ++c)
        stack.push_back(&*c);
    }
  }
  to_lower_ascii(&hay);
  return true;
}

// A document that cannot be a JSON object is refused at once; the rest is
// parsed when first listed.
bool looks_like_object(const std::string& document) {
  size_t first = document.find_first_not_of(" \t\r\n");
  size_t last = document.find_last_not_of(" \t\r\n");
  return first != std::string::npos && document[first] == '{' && document[last] == '}';
}

}  // namespace

bool url_decode(const std::string& in, std::string* out) {
  out->clear();
  out->reserve(in.size());
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '+') {
      out->push_back(' ');
    } else if (c == '%') {
      if (i + 2 >= in.size()) return false;
      int hi = hex(in[i + 1]), lo = hex(in[i + 2]);
      if (hi < 0 || lo < 0) return false;
      out->push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else {
      out->push_back(c);
    }
  }
  return true;
}

std::string summary_json(const TraceSummary& s) {
  return dump(summary_object(s));
}

RecentTraces::RecentTraces(RecentTracesOptions options) : opts_(options) {}

bool RecentTraces::add(const std::string& trace_id, uint32_t revision, std::string document) {
  return add(trace_id, revision, std::make_shared<const std::string>(std::move(document)));
}

bool RecentTraces::add(const std::string& trace_id, uint32_t revision,
                       std::shared_ptr<const std::string> document) {
  // Only cheap work here, on the assembler's thread: parsing waits until the
  // viewer lists the entry (see list()).
  if (!document) {
    std::lock_guard lock(mu_);
    ++stats_.rejected;
    return false;
  }
  auto entry = std::make_shared<Entry>();
  entry->summary.trace_id = trace_id;
  entry->summary.revision = revision;
  entry->bytes = document->size() + kEntryOverhead;
  std::lock_guard lock(mu_);
  auto it = by_id_.find(trace_id);
  if (it != by_id_.end() && by_seq_.at(it->second)->summary.revision >= revision) {
    ++stats_.stale;
    return false;
  }
  if (entry->bytes > opts_.max_bytes || !looks_like_object(*document)) {
    ++stats_.rejected;
    return false;
  }
  entry->document = std::move(document);
  if (it != by_id_.end()) {
    auto old = by_seq_.find(it->second);
    bytes_ -= old->second->bytes;
    by_seq_.erase(old);
  }
  TraceSummary& s = entry->summary;
  s.seq = next_seq_++;
  by_id_[trace_id] = s.seq;
  bytes_ += entry->bytes;
  by_seq_.emplace(s.seq, std::move(entry));
  ++stats_.added;
  evict_locked();
  return true;
}

void RecentTraces::evict_locked() const {
  while (!by_seq_.empty() && (by_seq_.size() > opts_.max_traces || bytes_ > opts_.max_bytes)) {
    auto oldest = by_seq_.begin();
    bytes_ -= oldest->second->bytes;
    by_id_.erase(oldest->second->summary.trace_id);
    by_seq_.erase(oldest);
    ++stats_.evicted;
  }
}

TraceList RecentTraces::list(const TraceQuery& query) const {
  TraceList out;
  std::vector<std::shared_ptr<const Entry>> candidates;
  {
    std::lock_guard lock(mu_);
    out.last_seq = next_seq_ - 1;
    for (auto it = by_seq_.rbegin(); it != by_seq_.rend() && it->first > query.since; ++it) {
      candidates.push_back(it->second);
    }
  }
  // Entries are summarised the first time they are listed, outside the lock;
  // the summarised copy replaces the entry unless it was replaced meanwhile.
  std::vector<std::pair<std::shared_ptr<const Entry>, std::shared_ptr<const Entry>>> parsed;
  for (auto& e : candidates) {
    if (e->summarised) continue;
    auto p = std::make_shared<Entry>(*e);
    p->summarised = true;
    p->malformed = !summarise(*e->document, &p->summary, &p->haystack);
    if (!p->malformed) p->bytes += p->haystack.size();
    parsed.emplace_back(e, p);
    e = p;
  }
  if (!parsed.empty()) {
    std::lock_guard lock(mu_);
    for (auto& [old, p] : parsed) {
      auto it = by_seq_.find(old->summary.seq);
      if (it == by_seq_.end() || it->second != old) continue;
      bytes_ -= old->bytes;
      if (p->malformed) {
        by_id_.erase(old->summary.trace_id);
        by_seq_.erase(it);
        ++stats_.rejected;
        --stats_.added;
        continue;
      }
      bytes_ += p->bytes;
      it->second = p;
    }
    evict_locked();
  }
  // Filtering happens outside the lock: entries are immutable.
  std::string needle = query.q;
  to_lower_ascii(&needle);
  for (const auto& e : candidates) {
    if (e->malformed) continue;
    const TraceSummary& s = e->summary;
    if (!query.session.empty() && s.session_id != query.session) continue;
    if (!query.conversation.empty() && s.conversation_id != query.conversation) continue;
    if (!query.user.empty() && s.user_id != query.user) continue;
    if (query.errors_only && s.errors == 0 && s.status != "error") continue;
    if (!needle.empty() && e->haystack.find(needle) == std::string::npos) continue;
    if (out.traces.size() >= query.limit) {
      out.more = true;
      break;
    }
    out.traces.push_back(s);
  }
  return out;
}

std::shared_ptr<const std::string> RecentTraces::get(const std::string& trace_id) const {
  std::lock_guard lock(mu_);
  auto it = by_id_.find(trace_id);
  if (it == by_id_.end()) return nullptr;
  return by_seq_.at(it->second)->document;
}

RecentTracesStats RecentTraces::stats() const {
  std::lock_guard lock(mu_);
  RecentTracesStats s = stats_;
  s.traces = by_seq_.size();
  s.bytes = bytes_;
  return s;
}

bool handle_viewer(const RecentTraces& traces, const std::string& method, const std::string& target,
                   AdminResponse* out) {
  size_t qmark = target.find('?');
  std::string path = target.substr(0, qmark);
  std::string query = qmark == std::string::npos ? std::string() : target.substr(qmark + 1);
  constexpr std::string_view kItem = "/api/traces/";
  bool page = path == "/ui" || path == "/ui/";
  bool list = path == "/api/traces";
  bool item = path.starts_with(kItem) && path.size() > kItem.size();
  if (!page && !list && !item) return false;
  if (method != "GET") {
    *out = AdminResponse{405, "text/plain; charset=utf-8", "only GET is supported here\n"};
    return true;
  }
  if (page) {
    *out = AdminResponse{200, "text/html; charset=utf-8", std::string(detail::kViewerPage)};
    return true;
  }
  if (list) {
    TraceQuery q;
    std::string error;
    if (!parse_query(query, &q, &error)) {
      *out = json_error(400, error);
      return true;
    }
    TraceList l = traces.list(q);
    json arr = json::array();
    for (const auto& s : l.traces)
      arr.push_back(summary_object(s));
    json body = json::object();
    body["last_seq"] = l.last_seq;
    body["more"] = l.more;
    body["traces"] = std::move(arr);
    *out = json_response(200, dump(body) + "\n");
    return true;
  }
  std::string id;
  if (!url_decode(path.substr(kItem.size()), &id)) {
    *out = json_error(400, "malformed percent-encoding in the trace id");
    return true;
  }
  auto doc = traces.get(id);
  if (!doc) {
    *out = json_error(404, "no recent trace with this id");
    return true;
  }
  *out = json_response(200, *doc);
  return true;
}

}  // namespace sidetrace::agent

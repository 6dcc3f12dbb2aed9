#include "agent/tail.h"

#include <fmt/format.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <csignal>
#include <ctime>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "agent/admin.h"
#include "agent/viewer.h"

namespace sidetrace::agent {

namespace {

using json = nlohmann::json;
namespace net = boost::asio;

constexpr size_t kPollLimit = 1000;  // the API's largest page

struct Style {
  bool color;
  std::string wrap(const char* code, const std::string& s) const {
    return color ? fmt::format("\x1b[{}m{}\x1b[0m", code, s) : s;
  }
  std::string bold(const std::string& s) const { return wrap("1", s); }
  std::string dim(const std::string& s) const { return wrap("2", s); }
  std::string red(const std::string& s) const { return wrap("1;31", s); }
  std::string yellow(const std::string& s) const { return wrap("33", s); }
  std::string green(const std::string& s) const { return wrap("32", s); }
  std::string cyan(const std::string& s) const { return wrap("36", s); }
};

// Text from the document, made safe for a terminal: control characters
// (escape sequences above all) become '?', line breaks and tabs spaces.
std::string safe(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (c == '\n' || c == '\r' || c == '\t') {
      out.push_back(' ');
    } else if (u < 0x20 || u == 0x7f) {
      out.push_back('?');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string text_at(const json& j, const char* key) {
  auto it = j.find(key);
  if (it != j.end() && it->is_string()) return safe(it->get<std::string>());
  return {};
}

std::string duration_text(const json& j) {
  auto it = j.find("duration_ms");
  if (it == j.end() || !it->is_number()) return "-";
  double ms = it->get<double>();
  if (ms < 1) return fmt::format("{:.3f} ms", ms);
  if (ms < 1000) return fmt::format("{:.1f} ms", ms);
  return fmt::format("{:.2f} s", ms / 1000);
}

std::string time_text(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer()) return "-";
  uint64_t ns = it->get<uint64_t>();
  std::time_t secs = static_cast<std::time_t>(ns / 1000000000u);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  return fmt::format("{}.{:03}Z", buf, (ns / 1000000u) % 1000u);
}

std::string status_text(const Style& st, const std::string& status) {
  if (status == "error") return st.red("error");
  if (status == "unfinished") return st.yellow("unfinished");
  return st.green(status.empty() ? "ok" : status);
}

std::string escape_query(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

std::string list_target(const TailOptions& o, uint64_t since, size_t limit) {
  std::string t = fmt::format("/api/traces?since={}&limit={}", since, limit);
  if (!o.session.empty()) t += "&session=" + escape_query(o.session);
  if (!o.conversation.empty()) t += "&conversation=" + escape_query(o.conversation);
  if (!o.user.empty()) t += "&user=" + escape_query(o.user);
  if (!o.query.empty()) t += "&q=" + escape_query(o.query);
  if (o.errors_only) t += "&errors=1";
  return t;
}

class Tailer {
 public:
  Tailer(const TailOptions& o, std::ostream& out) : o_(o), out_(out), style_{o.color} {}

  // Fetches one page of summaries; false when the agent did not answer it.
  bool fetch(uint64_t since, size_t limit, json* page) {
    unsigned status = 0;
    std::string body, error;
    if (!admin_get(o_.admin, list_target(o_, since, limit), &status, &body, &error, o_.token)) {
      last_error_ = error;
      return false;
    }
    if (status != 200) {
      last_error_ = fmt::format("GET /api/traces answered {}: {}", status, safe(body));
      if (status == 401) last_error_ += " (give it through SIDETRACE_ADMIN_TOKEN)";
      return false;
    }
    *page = json::parse(body, nullptr, false);
    if (!page->is_object() || !(*page)["traces"].is_array() ||
        !(*page)["last_seq"].is_number_unsigned()) {
      last_error_ = "GET /api/traces answered something that is not a trace list";
      return false;
    }
    return true;
  }

  // Prints the page's traces oldest first; returns how many were printed
  // before `budget` (0: unlimited) ran out.
  size_t print_page(const json& page, size_t budget) {
    const json& traces = page["traces"];
    size_t printed = 0;
    for (auto it = traces.rbegin(); it != traces.rend(); ++it) {
      if (budget != 0 && printed >= budget) break;
      print_one(*it);
      ++printed;
    }
    out_.flush();
    return printed;
  }

  const std::string& last_error() const { return last_error_; }

 private:
  void print_one(const json& summary) {
    std::string id = summary.value("trace_id", std::string());
    unsigned status = 0;
    std::string body, error, text;
    if (admin_get(o_.admin, "/api/traces/" + escape_query(id), &status, &body, &error, o_.token) &&
        status == 200 && render_trace_text(body, o_.color, &text)) {
      out_ << text << "\n";
      return;
    }
    // Gone from the agent's memory meanwhile (or unreadable): the summary.
    out_ << style_.bold("trace " + safe(id)) << "  "
         << status_text(style_, summary.value("status", std::string())) << "  "
         << style_.dim("(document no longer held by the agent)") << "\n\n";
  }

  const TailOptions& o_;
  std::ostream& out_;
  Style style_;
  std::string last_error_;
};

}  // namespace

bool render_trace_text(const std::string& document, bool color, std::string* text) {
  json doc = json::parse(document, nullptr, false);
  if (!doc.is_object() || !doc.contains("trace_id")) return false;
  Style st{color};
  std::string out;

  out += st.bold("trace " + text_at(doc, "trace_id"));
  out += fmt::format("  rev {}  {}  {}  {}", doc.value("revision", 0u), time_text(doc, "start_ts"),
                     st.dim(duration_text(doc)), status_text(st, text_at(doc, "status")));
  for (auto [key, label] :
       {std::pair{"conversation_id", "conversation"}, std::pair{"session_id", "session"}}) {
    std::string v = text_at(doc, key);
    if (!v.empty()) out += fmt::format("  {}={}", label, v);
  }
  if (auto u = doc.find("user"); u != doc.end() && u->is_object()) {
    std::string v = text_at(*u, "id");
    if (!v.empty()) out += "  user=" + v;
  }
  if (doc.value("partial", false)) out += "  " + st.yellow("partial");
  if (auto p = doc.find("part"); p != doc.end() && p->is_number_unsigned()) {
    out += "  " + st.yellow(fmt::format("part {}", p->get<uint64_t>()));
  }
  out += "\n";

  // Depth-first, children in document order, without recursion.
  std::vector<std::pair<const json*, size_t>> stack;
  if (auto ev = doc.find("events"); ev != doc.end() && ev->is_array()) {
    for (auto it = ev->rbegin(); it != ev->rend(); ++it)
      stack.emplace_back(&*it, 1);
  }
  while (!stack.empty()) {
    auto [e, depth] = stack.back();
    stack.pop_back();
    if (!e->is_object()) continue;
    std::string type = text_at(*e, "type"), name = text_at(*e, "name");
    std::string status = text_at(*e, "status");
    out += std::string(depth * 2, ' ');
    out += st.cyan(type.empty() ? "?" : type);
    out += " " + (name.empty() ? text_at(*e, "id") : name);
    out += "  " + st.dim(duration_text(*e)) + "  " + status_text(st, status);
    if (e->value("unfinished", false)) out += "  " + st.yellow("unfinished");
    if (e->value("orphan", false)) out += "  " + st.yellow("orphan");
    if (status == "error") {
      std::string why = text_at(*e, "error");
      out += "  " + st.red(why.empty() ? "!" : "! " + why);
    }
    out += "\n";
    if (auto c = e->find("children"); c != e->end() && c->is_array()) {
      for (auto it = c->rbegin(); it != c->rend(); ++it)
        stack.emplace_back(&*it, depth + 1);
    }
  }

  if (auto fb = doc.find("feedback"); fb != doc.end() && fb->is_array()) {
    for (const json& f : *fb) {
      if (!f.is_object()) continue;
      std::string line = "  " + st.bold("feedback");
      std::string tag = text_at(f, "tag"), ftext = text_at(f, "text"),
                  target = text_at(f, "target_id");
      if (!tag.empty()) line += "  " + tag;
      if (auto s = f.find("score"); s != f.end() && s->is_number()) line += "  score=" + s->dump();
      if (!ftext.empty()) line += "  \"" + ftext + "\"";
      line += target.empty() ? std::string("  on the trace") : "  on " + target;
      out += line + "\n";
    }
  }
  *text = std::move(out);
  return true;
}

int run_tail(const TailOptions& o, std::ostream& out, std::ostream& err) {
  if (o.admin.empty()) {
    err << "sidetrace tail: no admin endpoint (set --admin or admin.listen)\n";
    return 2;
  }
  if (o.interval.count() <= 0) {
    err << "sidetrace tail: --interval-ms must be positive\n";
    return 2;
  }
  net::io_context io;
  net::signal_set signals(io, SIGINT, SIGTERM);
  bool stop = false;
  signals.async_wait([&](const boost::system::error_code& ec, int) {
    if (!ec) stop = true;
  });

  Tailer tailer(o, out);
  json page;
  if (!tailer.fetch(0, o.last, &page)) {
    err << "sidetrace tail: " << tailer.last_error() << "\n";
    return 3;
  }
  uint64_t since = page["last_seq"].get<uint64_t>();
  size_t printed = tailer.print_page(page, o.count);
  bool down = false;

  while (!stop && (o.count == 0 || printed < o.count)) {
    io.restart();
    io.run_for(o.interval);  // returns early when a signal arrives
    if (stop) break;
    if (!tailer.fetch(since, kPollLimit, &page)) {
      if (!down) err << "sidetrace tail: " << tailer.last_error() << "; retrying\n";
      down = true;
      continue;
    }
    if (down) err << "sidetrace tail: the agent answers again\n";
    down = false;
    uint64_t last = page["last_seq"].get<uint64_t>();
    if (last < since) {
      // The agent restarted and numbers from 1 again: everything it holds is new.
      since = 0;
      if (!tailer.fetch(0, kPollLimit, &page)) continue;
      last = page["last_seq"].get<uint64_t>();
    }
    if (page.value("more", false)) {
      err << "sidetrace tail: more traces finished than one poll returns; some were skipped\n";
    }
    printed += tailer.print_page(page, o.count == 0 ? 0 : o.count - printed);
    since = last;
  }
  signals.cancel();
  return 0;
}

}  // namespace sidetrace::agent

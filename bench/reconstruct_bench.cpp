// Trace reconstruction throughput: build_trace() over realistic traces (start
// and end per event, a small attrs map, string input/output, nested events,
// context), on one thread, messages in shuffled order. Rates are per second
// of the thread's CPU time.
//
// Prints one JSON object per trace shape:
//   {"bench":"reconstruct","events_per_trace":N,"events_per_s":...,"messages_per_s":...,
//    "doc_bytes_per_event":...}
#include <msgpack.hpp>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <random>
#include <string>
#include <vector>

#include "bench/thread_cpu.h"
#include "trace/reconstruct.h"

using sidetrace::bench::thread_cpu_s;

namespace {

using Packer = msgpack::packer<msgpack::sbuffer>;
constexpr uint64_t kT0 = 1'700'000'000'000'000'000ull;

void str(Packer& p, std::string_view s) {
  p.pack_str(static_cast<uint32_t>(s.size()));
  p.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}

void header(Packer& p, msgpack::sbuffer& buf, const char* kind, const std::string& trace_id,
            uint32_t fields) {
  buf.clear();
  p.pack_map(3 + fields);
  str(p, "v");
  p.pack(1);
  str(p, "kind");
  str(p, kind);
  str(p, "trace_id");
  str(p, trace_id);
}

std::vector<std::string> make_trace(const std::string& trace_id, size_t events, std::mt19937& rng) {
  std::vector<std::string> out;
  msgpack::sbuffer buf;
  Packer p(buf);
  const std::string input(120, 'q'), output(300, 'a');
  for (size_t k = 0; k < events; ++k) {
    const std::string id = "e" + std::to_string(k);
    const uint64_t ts = kT0 + k * 1'000'000;
    header(p, buf, "start", trace_id, k > 0 ? 6 : 5);
    str(p, "id");
    str(p, id);
    if (k > 0) {
      str(p, "parent_id");
      str(p, "e" + std::to_string(rng() % k));
    }
    str(p, "type");
    str(p, k % 3 == 0 ? "GENERATION" : "TOOL");
    str(p, "name");
    str(p, "step");
    str(p, "input");
    str(p, input);
    str(p, "ts");
    p.pack(ts);
    out.emplace_back(buf.data(), buf.size());

    header(p, buf, "end", trace_id, 4);
    str(p, "id");
    str(p, id);
    str(p, "output");
    str(p, output);
    str(p, "ts");
    p.pack(ts + 700'000);
    str(p, "attrs");
    p.pack_map(3);
    str(p, "model");
    str(p, "gpt-4o-mini");
    str(p, "input_tokens");
    p.pack(120);
    str(p, "cost_usd");
    p.pack(0.00042);
    out.emplace_back(buf.data(), buf.size());
  }
  header(p, buf, "trace", trace_id, 3);
  str(p, "conversation_id");
  str(p, "conv-1");
  str(p, "user");
  p.pack_map(1);
  str(p, "id");
  str(p, "u-42");
  str(p, "metadata");
  p.pack_map(1);
  str(p, "environment");
  str(p, "prod");
  out.emplace_back(buf.data(), buf.size());
  std::shuffle(out.begin(), out.end(), rng);
  return out;
}

void run(size_t events_per_trace) {
  std::mt19937 rng(7);
  const std::string trace_id = "0af7651916cd43dd8448eb211c80319c";
  const std::vector<std::string> raws = make_trace(trace_id, events_per_trace, rng);
  std::vector<sidetrace::trace::StoredMessage> msgs;
  for (size_t k = 0; k < raws.size(); ++k)
    msgs.push_back({k + 1, kT0, raws[k]});
  const sidetrace::trace::BuildOptions options;
  // Run for about a second of this thread's CPU time: rates are per core and
  // do not depend on what else the machine runs.
  size_t builds = 0, doc_bytes = 0;
  const double start = thread_cpu_s();
  double elapsed = 0;
  while (elapsed < 1.0) {
    auto r = sidetrace::trace::build_trace(trace_id, msgs, options);
    doc_bytes = r.document.size();
    ++builds;
    elapsed = thread_cpu_s() - start;
  }
  const double events = static_cast<double>(builds * events_per_trace);
  std::printf(
      "{\"bench\":\"reconstruct\",\"events_per_trace\":%zu,\"events_per_s\":%.0f,"
      "\"messages_per_s\":%.0f,\"doc_bytes_per_event\":%zu}\n",
      events_per_trace, events / elapsed, static_cast<double>(builds * msgs.size()) / elapsed,
      doc_bytes / events_per_trace);
}

}  // namespace

int main() {
  for (size_t n : {1, 10, 100, 1000})
    run(n);
  return 0;
}

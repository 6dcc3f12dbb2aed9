// Redaction cost per message: Redactor::apply() over realistic ~500-byte
// `event` messages (prose input and output, an attrs map), on one thread.
// Time is the thread's CPU time; copying the messages is not counted.
//
// Cases:
//   off            no detector, no rule, no limit (the cost of the hook)
//   clean          the four detectors, no secret in the message
//   one_secret     the four detectors, one API key in the input
//   all_on         the four detectors, a user regex rule and max_field_bytes,
//                  with a secret of every kind
//   clean_regex    one user regex rule only, no secret
//
// Prints one JSON object per case:
//   {"bench":"redact","case":"clean","msg_bytes":...,"ns_per_msg":...,"redacted":...}
#include <msgpack.hpp>

#include <cstdio>
#include <ctime>
#include <string>
#include <vector>

#include "ipc/redact.h"

namespace {

using Packer = msgpack::packer<msgpack::sbuffer>;

void str(Packer& p, std::string_view s) {
  p.pack_str(static_cast<uint32_t>(s.size()));
  p.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}

std::string event(uint64_t n, const std::string& input, const std::string& output) {
  msgpack::sbuffer buf;
  Packer p(buf);
  p.pack_map(12);
  str(p, "v");
  p.pack(1);
  str(p, "kind");
  str(p, "event");
  char trace[33];
  std::snprintf(trace, sizeof trace, "%032llx", static_cast<unsigned long long>(n / 8 + 1));
  str(p, "trace_id");
  str(p, trace);
  str(p, "id");
  str(p, std::to_string(n));
  str(p, "type");
  str(p, "GENERATION");
  str(p, "name");
  str(p, "chat.completions");
  str(p, "input");
  str(p, input);
  str(p, "output");
  str(p, output);
  str(p, "ts");
  p.pack(uint64_t{1'700'000'000'000'000'000ull + n});
  str(p, "latency_ms");
  p.pack(842);
  str(p, "status");
  str(p, "ok");
  str(p, "attrs");
  p.pack_map(4);
  str(p, "model");
  str(p, "gpt-4o-mini");
  str(p, "input_tokens");
  p.pack(412);
  str(p, "output_tokens");
  p.pack(128);
  str(p, "cost_usd");
  p.pack(0.00042);
  return std::string(buf.data(), buf.size());
}

const std::string kInput =
    "Summarise the attached quarterly report for the board in under 200 words; mention "
    "revenue growth of 12% in Q3 2024.";
const std::string kOutput =
    "Revenue grew 12% in the third quarter of 2024, driven by strong demand in the "
    "enterprise segment. The main risks are supply chain delays and currency exposure.";

double cpu_ns() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

void run(const char* name, const sidetrace::ipc::RedactOptions& opts, const std::string& input) {
  std::string error;
  auto r = sidetrace::ipc::Redactor::create(opts, &error);
  if (!r) {
    std::fprintf(stderr, "redact_bench: %s\n", error.c_str());
    std::exit(1);
  }
  constexpr size_t kBatch = 20000;
  std::vector<sidetrace::ipc::Message> proto(kBatch);
  for (size_t i = 0; i < kBatch; ++i) {
    proto[i].trace_id.assign(1, 't');
    proto[i].raw = event(i, input, kOutput);
  }
  std::vector<sidetrace::ipc::Message> work;
  double spent = 0;
  uint64_t done = 0, redacted = 0;
  sidetrace::ipc::RedactStats stats;
  while (spent < 3e8) {
    work = proto;
    double t0 = cpu_ns();
    for (auto& m : work)
      redacted += r->apply(m, &stats) ? 1 : 0;
    spent += cpu_ns() - t0;
    done += kBatch;
  }
  std::printf(
      "{\"bench\":\"redact\",\"case\":\"%s\",\"msg_bytes\":%zu,\"ns_per_msg\":%.0f,"
      "\"redacted\":%.2f}\n",
      name, proto[0].raw.size(), spent / static_cast<double>(done),
      static_cast<double>(redacted) / static_cast<double>(done));
}

}  // namespace

int main() {
  using sidetrace::ipc::RedactOptions;
  const std::vector<std::string> all = {"api_keys", "bearer_tokens", "emails", "card_numbers"};
  std::string secret = kInput;
  secret.append(" Use key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXyz0.");
  std::string many = kInput;
  many.append(
      " Use key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXyz0, mail jane@example.com, card "
      "4111 1111 1111 1111, Bearer abc123def456, password=hunter2.");

  RedactOptions off;
  run("off", off, kInput);

  RedactOptions detectors;
  detectors.detectors = all;
  run("clean", detectors, kInput);
  run("one_secret", detectors, secret);

  RedactOptions everything = detectors;
  everything.rules = {{"password", R"((password\s*[:=]\s*)\S+)", "$1[REDACTED:password]"}};
  everything.max_field_bytes = 256;
  run("all_on", everything, many);

  RedactOptions regex_only;
  regex_only.rules = everything.rules;
  run("clean_regex", regex_only, kInput);
  return 0;
}

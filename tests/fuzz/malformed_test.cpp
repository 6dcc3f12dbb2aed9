// The hand-made malformed corpus: every file of tests/fuzz/malformed/ gets
// exactly the outcome malformed/EXPECTED.tsv names for it (a Reject reason
// name from ipc/event.h, or "ok" for an edge case the protocol accepts), from
// both decoders, and every file is listed.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>
#include <string>

#include "ipc/event.h"

namespace sidetrace::ipc {
namespace {

namespace fs = std::filesystem;

const fs::path kDir = fs::path(SIDETRACE_FUZZ_DIR) / "malformed";

std::string read_all(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// file name -> expected outcome
std::map<std::string, std::string> manifest() {
  std::map<std::string, std::string> out;
  std::istringstream in(read_all(kDir / "EXPECTED.tsv"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t tab = line.find('\t');
    EXPECT_NE(tab, std::string::npos) << "no tab in manifest line: " << line;
    if (tab == std::string::npos) continue;
    EXPECT_TRUE(out.emplace(line.substr(0, tab), line.substr(tab + 1)).second)
        << "listed twice: " << line;
  }
  return out;
}

std::string outcome(const std::string& bytes, std::string* detail) {
  Event ev;
  Reject reason = Reject::kCount_;
  if (decode_event(bytes, DecodeLimits{}, &ev, &reason, detail)) return "ok";
  return std::string(reject_name(reason));
}

TEST(FuzzMalformed, EveryFileGetsItsExpectedOutcome) {
  const auto expected = manifest();
  ASSERT_GE(expected.size(), 40u);
  std::set<std::string> known_reasons = {"ok"};
  for (int r = 0; r < static_cast<int>(Reject::kCount_); ++r) {
    // no_memory is the intake's state when a message arrives, not the message's.
    if (static_cast<Reject>(r) == Reject::kNoMemory) continue;
    known_reasons.insert(std::string(reject_name(static_cast<Reject>(r))));
  }
  std::set<std::string> seen_reasons;
  for (const auto& [file, want] : expected) {
    SCOPED_TRACE(file);
    ASSERT_TRUE(known_reasons.count(want)) << "unknown outcome in the manifest: " << want;
    ASSERT_TRUE(fs::is_regular_file(kDir / file)) << "listed but missing";
    const std::string bytes = read_all(kDir / file);
    std::string detail;
    EXPECT_EQ(outcome(bytes, &detail), want) << detail;
    if (want != "ok") {
      EXPECT_FALSE(detail.empty());
    }
    // The routing decode used by intake agrees.
    Message m;
    Reject reason = Reject::kCount_;
    const bool ok = decode_message(bytes, DecodeLimits{}, &m, &reason, nullptr);
    EXPECT_EQ(ok ? std::string("ok") : std::string(reject_name(reason)), want);
    seen_reasons.insert(want);
  }
  // Every reason a single message can earn is exercised.
  EXPECT_EQ(seen_reasons, known_reasons);
}

TEST(FuzzMalformed, EveryFileIsListed) {
  const auto expected = manifest();
  for (const auto& entry : fs::directory_iterator(kDir)) {
    const std::string name = entry.path().filename().string();
    if (name == "EXPECTED.tsv") continue;
    EXPECT_TRUE(expected.count(name)) << name << " is not in EXPECTED.tsv";
  }
}

}  // namespace
}  // namespace sidetrace::ipc

// How often one of this process's threads has gone to sleep and woken again.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace sidetrace::upstream::testing {

// The voluntary context switches of the thread named `name` (each wait that
// blocked it counts one), or -1 when no thread has that name.
inline int64_t thread_wakes(std::string_view name) {
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(e.path() / "comm");
    std::string line;
    if (!std::getline(comm, line) || line != name) continue;
    std::ifstream status(e.path() / "status");
    constexpr std::string_view kKey = "voluntary_ctxt_switches:";
    while (std::getline(status, line)) {
      if (line.rfind(kKey, 0) == 0) return std::strtoll(line.c_str() + kKey.size(), nullptr, 10);
    }
  }
  return -1;
}

}  // namespace sidetrace::upstream::testing

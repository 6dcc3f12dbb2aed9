// Command-line tools that talk to a running agent (through its admin
// endpoint) or to its store directly when no agent holds it.
#pragma once

#include <chrono>
#include <ostream>
#include <string>

#include "buffer/store.h"
#include "config/config.h"

namespace sidetrace::agent {

// The tools below that talk to the admin endpoint send `token` (the admin
// token, "" for none) as a bearer token; config::admin_token() gives it.

// `sidetrace status`: prints the agent's summary (or its raw metrics).
// Returns 0 when the agent answered and is ready, 1 when it is not ready,
// 3 when it cannot be reached or refuses the request (token, host name).
int run_status(const std::string& admin_addr, const std::string& token, bool raw_metrics,
               std::ostream& out, std::ostream& err);

// How long the tools below follow an operation they started in a running
// agent (agent/operations.h) before they give up waiting (it goes on).
inline constexpr std::chrono::seconds kDeadLetterFollow{3600};
inline constexpr std::chrono::seconds kReloadFollow{60};

// `sidetrace deadletter list|replay|purge`: works on the store in
// cfg.data_dir when no agent runs, and through the running agent's admin
// endpoint when one holds the store: a replay or purge there is an operation
// that the tool follows for up to `wait`, printing its progress on `err`
// while it takes long. Returns 0 on success.
int run_deadletter(const config::Config& cfg, const std::string& action, std::ostream& out,
                   std::ostream& err, std::chrono::milliseconds wait = kDeadLetterFollow);

// `sidetrace reload`: asks the running agent to re-read its configuration
// and follows the reload for up to `wait`. Returns 0 when it did, 1 when it
// refused the new configuration (or did not finish in time), 3 when it
// cannot be reached or refuses the request.
int run_reload(const std::string& admin_addr, const std::string& token, std::ostream& out,
               std::ostream& err, std::chrono::milliseconds wait = kReloadFollow);

// The dead-letter actions on an open store, as text (shared by the CLI and
// the admin endpoint). `action` is "list", "replay" or "purge". Returns false
// on a store error, with the reason in the text. A list shows at most
// kDeadLetterListMax records, the oldest, and the totals of all.
inline constexpr size_t kDeadLetterListMax = 1000;

// `sidetrace quarantine list|release <trace id>`: the traces the assembler
// set aside (a build that failed every time), on the store, or through the
// running agent's admin endpoint when it holds the store. A release in a
// running agent builds the trace at once; in a stopped one, at its next
// start. Returns 0 on success, 1 otherwise.
int run_quarantine(const config::Config& cfg, const std::string& action,
                   const std::string& trace_id, std::ostream& out, std::ostream& err);
// The quarantine actions on an open store, as text (shared by the CLI and
// the admin endpoint); false when the trace is not set aside or on a store
// error. A list shows at most kQuarantineListMax traces.
bool quarantine_action(buffer::Store& store, const std::string& action, const std::string& trace_id,
                       std::string* text);
inline constexpr size_t kQuarantineListMax = 1000;
bool deadletter_action(buffer::Store& store, const std::string& action, std::string* text);

}  // namespace sidetrace::agent

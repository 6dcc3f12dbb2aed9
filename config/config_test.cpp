#include "config/config.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace sidetrace::config {
namespace {

class ConfigFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("sidetrace-config-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string write(const std::string& text) {
    auto path = (dir_ / "sidetrace.toml").string();
    std::ofstream(path) << text;
    return path;
  }

  // The message of the ConfigError that loading `text` throws, or "" if none.
  std::string error_of(const std::string& text) {
    auto path = write(text);
    try {
      load(path, {}, {});
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "";
  }

  std::filesystem::path dir_;
};

TEST(ConfigDefaults, MatchTheDocumentedValues) {
  Config c;
  EXPECT_EQ(c.data_dir, "/var/lib/sidetrace");
  EXPECT_EQ(c.listen.unix_stream, "/run/sidetrace/agent.sock");
  EXPECT_EQ(c.listen.unix_dgram, "/run/sidetrace/agent.dgram.sock");
  EXPECT_EQ(c.listen.udp, "127.0.0.1:7717");
  EXPECT_EQ(c.listen.otlp_http, "127.0.0.1:4318");
  EXPECT_EQ(c.listen.otlp_max_body_bytes, 16u << 20);
  EXPECT_EQ(c.listen.socket_mode, 0660u);
  EXPECT_EQ(c.admin.listen, "127.0.0.1:7718");
  EXPECT_EQ(c.admin.token, "");
  EXPECT_EQ(c.admin.token_file, "");
  EXPECT_TRUE(c.admin.allowed_hosts.empty());
  EXPECT_EQ(c.upstream.endpoint, "");
  EXPECT_EQ(c.upstream.format, "native");
  EXPECT_EQ(c.upstream.otlp_encoding, "protobuf");
  EXPECT_EQ(c.trace.quiet_period_ms, 1000);
  EXPECT_EQ(c.trace.max_open_s, 600);
  EXPECT_EQ(c.buffer.max_bytes, 2ull << 30);
  EXPECT_EQ(c.buffer.sync, "fsync");
  EXPECT_EQ(c.buffer.when_full, "drop_oldest");
  EXPECT_EQ(c.log.level, "info");
  EXPECT_NO_THROW(validate(c));
}

TEST_F(ConfigFileTest, ReadsEveryDocumentedKey) {
  auto path = write(R"(
data_dir = "/tmp/st"
[listen]
unix_stream = "/tmp/st/a.sock"
unix_dgram  = ""
udp         = "127.0.0.1:9999"
socket_mode = "0600"
[admin]
listen = "127.0.0.1:0"
[upstream]
endpoint = "https://collector.example:4318"
format   = "otlp"
otlp_encoding = "json"
headers  = { "X-Team" = "llm", "Authorization" = "Bearer s3cret" }
[trace]
quiet_period_ms = 250
max_open_s = 30
[buffer]
max_bytes = "512MiB"
sync = "os"
[log]
level = "debug"
)");
  Config c = load(path, {}, {});
  EXPECT_EQ(c.data_dir, "/tmp/st");
  EXPECT_EQ(c.listen.unix_stream, "/tmp/st/a.sock");
  EXPECT_EQ(c.listen.unix_dgram, "");
  EXPECT_EQ(c.listen.udp, "127.0.0.1:9999");
  EXPECT_EQ(c.listen.socket_mode, 0600u);
  EXPECT_EQ(c.upstream.format, "otlp");
  EXPECT_EQ(c.upstream.otlp_encoding, "json");
  EXPECT_EQ(c.upstream.headers.at("X-Team"), "llm");
  EXPECT_EQ(c.trace.quiet_period_ms, 250);
  EXPECT_EQ(c.trace.max_open_s, 30);
  EXPECT_EQ(c.buffer.max_bytes, 512ull << 20);
  EXPECT_EQ(c.buffer.sync, "os");
  EXPECT_EQ(c.log.level, "debug");
}

TEST_F(ConfigFileTest, StringAndFileReadTheSameWay) {
  const std::string text =
      "data_dir = \"/tmp/st\"\n[listen]\nsocket_mode = \"0600\"\n[buffer]\nmax_bytes = "
      "\"64MiB\"\n";
  Config from_file;
  apply_file(from_file, write(text));
  Config from_string;
  apply_toml_string(from_string, text, "inline.toml");
  EXPECT_TRUE(changed_keys(from_file, from_string).empty());
  EXPECT_EQ(from_string.data_dir, "/tmp/st");
  EXPECT_EQ(from_string.listen.socket_mode, 0600u);
  EXPECT_EQ(from_string.buffer.max_bytes, 64ull << 20);
}

TEST(ConfigToml, ControlCharactersRoundTrip) {
  Config c;
  apply_toml_string(c, "data_dir = \"a\\u007fb\\u0001c\\td\\ne\"\n", "inline.toml");
  ASSERT_EQ(c.data_dir,
            "a\x7f"
            "b\x01"
            "c\td\ne");
  Config back;
  apply_toml_string(back, to_toml(c, false), "printed");
  EXPECT_EQ(back.data_dir, c.data_dir);
  EXPECT_TRUE(changed_keys(c, back).empty());
}

TEST(ConfigString, ErrorsNameTheSourceAndLine) {
  Config c;
  try {
    apply_toml_string(c, "[trace]\nquiet_period_ms = 5\nbogus = 1\n", "inline.toml");
    ADD_FAILURE() << "an unknown key was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("inline.toml:3"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("trace.bogus"), std::string::npos) << e.what();
  }
  try {
    apply_toml_string(c, "[trace\nx = ", "inline.toml");
    ADD_FAILURE() << "unparsable TOML was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("inline.toml:1"), std::string::npos) << e.what();
  }
}

TEST_F(ConfigFileTest, UnknownKeyNamesKeyFileAndLine) {
  std::string err = error_of("[trace]\nquiet_period_ms = 5\nquiet_perod_ms = 10\n");
  EXPECT_NE(err.find("trace.quiet_perod_ms"), std::string::npos) << err;
  EXPECT_NE(err.find("sidetrace.toml:3"), std::string::npos) << err;
  EXPECT_NE(err.find("unknown key"), std::string::npos) << err;
}

TEST_F(ConfigFileTest, UnknownSectionIsAnError) {
  std::string err = error_of("[tracing]\nx = 1\n");
  EXPECT_NE(err.find("tracing"), std::string::npos) << err;
  EXPECT_NE(err.find("sidetrace.toml:1"), std::string::npos) << err;
}

TEST_F(ConfigFileTest, WrongTypeNamesKeyAndTypes) {
  std::string err = error_of("[trace]\nquiet_period_ms = \"soon\"\n");
  EXPECT_NE(err.find("trace.quiet_period_ms"), std::string::npos) << err;
  EXPECT_NE(err.find("expected an integer, got a string"), std::string::npos) << err;
  EXPECT_NE(err.find(":2"), std::string::npos) << err;
}

TEST_F(ConfigFileTest, OutOfRangeValueIsAnError) {
  std::string err = error_of("[upstream]\nmax_in_flight = 0\n");
  EXPECT_NE(err.find("upstream.max_in_flight"), std::string::npos) << err;
  EXPECT_NE(err.find("out of range"), std::string::npos) << err;
}

TEST_F(ConfigFileTest, BadEnumListsTheChoices) {
  std::string err = error_of("[buffer]\nsync = \"sometimes\"\n");
  EXPECT_NE(err.find("buffer.sync"), std::string::npos) << err;
  EXPECT_NE(err.find("\"fsync\", \"os\""), std::string::npos) << err;
  err = error_of("[upstream]\notlp_encoding = \"grpc\"\n");
  EXPECT_NE(err.find("upstream.otlp_encoding"), std::string::npos) << err;
  EXPECT_NE(err.find("\"protobuf\", \"json\""), std::string::npos) << err;
}

TEST_F(ConfigFileTest, SyntaxErrorNamesFileAndLine) {
  std::string err = error_of("[trace]\nquiet_period_ms = = 3\n");
  EXPECT_NE(err.find("sidetrace.toml:2"), std::string::npos) << err;
}

TEST_F(ConfigFileTest, MissingFileIsAnError) {
  EXPECT_THROW(load((dir_ / "absent.toml").string(), {}, {}), ConfigError);
}

TEST_F(ConfigFileTest, PrecedenceIsCliOverEnvOverFileOverDefaults) {
  auto path = write("[trace]\nquiet_period_ms = 10\nmax_open_s = 20\nretain_s = 30\n");
  Config c = load(path,
                  {"SIDETRACE_TRACE_MAX_OPEN_S=21", "SIDETRACE_TRACE_RETAIN_S=31",
                   "SIDETRACE_ENDPOINT=unix:///ignored", "PATH=/bin"},
                  {"trace.retain_s=32"});
  EXPECT_EQ(c.trace.quiet_period_ms, 10);                              // file
  EXPECT_EQ(c.trace.max_open_s, 21);                                   // env over file
  EXPECT_EQ(c.trace.retain_s, 32);                                     // CLI over env
  EXPECT_EQ(c.trace.max_open_traces, Config{}.trace.max_open_traces);  // default
}

TEST_F(ConfigFileTest, RedactListsAndRules) {
  auto path = write(R"(
[redact]
detectors = ["emails", "api_keys"]
max_field_bytes = "4k"

[[redact.rules]]
name = "ticket"
pattern = "TICKET-[0-9]+"

[[redact.rules]]
name = "phone"
pattern = "\\+[0-9]{11}"
replacement = "[phone]"
)");
  Config c = load(path, {"SIDETRACE_REDACT_FIELDS=input, output"}, {});
  EXPECT_EQ(c.redact.detectors, (std::vector<std::string>{"emails", "api_keys"}));
  EXPECT_EQ(c.redact.fields, (std::vector<std::string>{"input", "output"}));
  EXPECT_EQ(c.redact.max_field_bytes, 4096u);
  ASSERT_EQ(c.redact.rules.size(), 2u);
  EXPECT_EQ(c.redact.rules[1].name, "phone");
  EXPECT_EQ(c.redact.rules[1].replacement, "[phone]");

  // The effective configuration reads back to the same rules.
  auto again = write(to_toml(c, false));
  EXPECT_TRUE(changed_keys(c, load(again, {}, {})).empty());
}

TEST_F(ConfigFileTest, RedactRuleErrorsNameTheKey) {
  std::string err = error_of("[[redact.rules]]\nname = \"x\"\npattern = \"y\"\ncolour = \"z\"\n");
  EXPECT_NE(err.find("redact.rules.colour"), std::string::npos) << err;
  EXPECT_NE(err.find(":4"), std::string::npos) << err;
  err = error_of("[redact]\ndetectors = \"emails\"\n");
  EXPECT_NE(err.find("redact.detectors"), std::string::npos) << err;
  EXPECT_NE(err.find("an array of strings"), std::string::npos) << err;
  Config c;
  EXPECT_THROW(apply_env(c, {"SIDETRACE_REDACT_RULES=x"}), ConfigError);
}

TEST(ConfigEnv, TopLevelAndSectionKeys) {
  Config c;
  apply_env(c, {"SIDETRACE_DATA_DIR=/d", "SIDETRACE_LISTEN_UNIX_STREAM=/d/s.sock",
                "SIDETRACE_UPSTREAM_TLS_VERIFY=false", "SIDETRACE_BUFFER_MAX_BYTES=1GiB",
                "SIDETRACE_UPSTREAM_HEADERS=X-A=1, X-B=2"});
  EXPECT_EQ(c.data_dir, "/d");
  EXPECT_EQ(c.listen.unix_stream, "/d/s.sock");
  EXPECT_FALSE(c.upstream.tls_verify);
  EXPECT_EQ(c.buffer.max_bytes, 1ull << 30);
  EXPECT_EQ(c.upstream.headers.at("X-A"), "1");
  EXPECT_EQ(c.upstream.headers.at("X-B"), "2");
}

TEST(ConfigEnv, BadValueNamesTheVariable) {
  Config c;
  try {
    apply_env(c, {"SIDETRACE_TRACE_QUIET_PERIOD_MS=abc"});
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("SIDETRACE_TRACE_QUIET_PERIOD_MS"), std::string::npos) << msg;
    EXPECT_NE(msg.find("trace.quiet_period_ms"), std::string::npos) << msg;
  }
}

TEST(ConfigOverride, UnknownKeyAndMalformedAssignment) {
  Config c;
  EXPECT_THROW(apply_override(c, "trace.nope=1"), ConfigError);
  EXPECT_THROW(apply_override(c, "trace.quiet_period_ms"), ConfigError);
  apply_override(c, "listen.socket_mode=0600");
  EXPECT_EQ(c.listen.socket_mode, 0600u);
}

TEST(ConfigValidate, CrossKeyRules) {
  Config c;
  c.upstream.retry_initial_ms = 10'000;
  c.upstream.retry_max_ms = 1'000;
  EXPECT_THROW(validate(c), ConfigError);
  Config d;
  d.upstream.endpoint = "ftp://x";
  EXPECT_THROW(validate(d), ConfigError);
  Config e;
  e.listen.unix_stream = e.listen.unix_dgram = e.listen.udp = "";
  EXPECT_NO_THROW(validate(e)) << "OTLP/HTTP alone is a transport";
  e.listen.otlp_http = "";
  EXPECT_THROW(validate(e), ConfigError);
  Config g;
  g.listen.otlp_max_body_bytes = 32 << 20;
  g.listen.otlp_max_pending_bytes = 16 << 20;  // could never hold one whole request
  EXPECT_THROW(validate(g), ConfigError);
  g.listen.otlp_http = "";
  EXPECT_NO_THROW(validate(g)) << "not checked when OTLP/HTTP is off";
  Config f;
  f.listen.max_message_bytes = 8 << 20;
  f.listen.max_partial_bytes = 4 << 20;  // could never hold one whole message
  EXPECT_THROW(validate(f), ConfigError);
}

TEST_F(ConfigFileTest, SizesPastWhatTheKernelTakesAreRefusedNotTruncated) {
  // SO_RCVBUF takes an int: 2 GiB would wrap to a negative size.
  EXPECT_NE(error_of("[listen]\nrcvbuf_bytes = \"2GiB\"\n").find("listen.rcvbuf_bytes"),
            std::string::npos);
  EXPECT_EQ(error_of("[listen]\nrcvbuf_bytes = \"1GiB\"\n"), "");
}

// The message of the ConfigError that validate() throws for `c`, or "".
std::string validate_error(const Config& c) {
  try {
    validate(c);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

constexpr const char* kToken = "0123456789abcdef0123";

TEST(ConfigAdmin, ListeningBeyondLoopbackNeedsAToken) {
  for (const char* listen : {"0.0.0.0:7718", "[::]:7718", "192.168.1.5:7718", "10.0.0.1:0",
                             "[fd00::1]:7718", "agent.example:7718"}) {
    Config c;
    c.admin.listen = listen;
    std::string err = validate_error(c);
    EXPECT_NE(err.find("admin.token"), std::string::npos) << listen << ": " << err;
    EXPECT_NE(err.find(listen), std::string::npos) << err;
    c.admin.token = kToken;
    EXPECT_EQ(validate_error(c), "") << listen;
    c.admin.token.clear();
    c.admin.token_file = "/run/secrets/admin-token";
    EXPECT_EQ(validate_error(c), "") << listen;
  }
  for (const char* listen : {"127.0.0.1:7718", "127.1.2.3:0", "localhost:7718", "[::1]:7718",
                             "[::ffff:127.0.0.1]:7718", ""}) {
    Config c;
    c.admin.listen = listen;
    EXPECT_EQ(validate_error(c), "") << listen;
  }
}

TEST(ConfigAdmin, TheRefusalStopsLoadingFromEverySource) {
  try {
    load("", {"SIDETRACE_ADMIN_LISTEN=0.0.0.0:7718"}, {});
    ADD_FAILURE() << "0.0.0.0 without a token accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("admin.token"), std::string::npos) << e.what();
  }
  EXPECT_THROW(load("", {}, {"admin.listen=0.0.0.0:7718"}), ConfigError);
  Config c =
      load("",
           {"SIDETRACE_ADMIN_LISTEN=0.0.0.0:7718", std::string("SIDETRACE_ADMIN_TOKEN=") + kToken,
            "SIDETRACE_ADMIN_ALLOWED_HOSTS=agent.internal, .svc.example"},
           {});
  EXPECT_EQ(c.admin.token, kToken);
  EXPECT_EQ(c.admin.allowed_hosts, (std::vector<std::string>{"agent.internal", ".svc.example"}));
  EXPECT_TRUE(needs_restart("admin.token"));
  EXPECT_TRUE(needs_restart("admin.allowed_hosts"));
}

TEST(ConfigAdmin, TokenAndAllowedHostsAreChecked) {
  Config c;
  c.admin.token = "short";
  EXPECT_NE(validate_error(c).find("admin.token: must be at least 16"), std::string::npos)
      << validate_error(c);
  c.admin.token = "with a space in it, long enough";
  EXPECT_NE(validate_error(c).find("admin.token: may hold only printable"), std::string::npos);
  c.admin.token = kToken;
  c.admin.token_file = "/run/secrets/admin-token";
  EXPECT_NE(validate_error(c).find("not both"), std::string::npos);

  for (const char* bad : {"*", "", "http://agent.example", "agent.example:7718", "[::1]",
                          "agent.example/ui", "*.example"}) {
    Config d;
    d.admin.allowed_hosts = {bad};
    EXPECT_NE(validate_error(d).find("admin.allowed_hosts"), std::string::npos) << bad;
  }
  Config d;
  d.admin.allowed_hosts = {"agent.example", ".svc.example", "10.0.0.5", "fd00::5"};
  EXPECT_EQ(validate_error(d), "");
}

TEST(ConfigListen, OtlpAllowedHostsAreReadAndChecked) {
  Config c = load("", {"SIDETRACE_LISTEN_OTLP_ALLOWED_HOSTS=sidetrace, .svc.example"}, {});
  EXPECT_EQ(c.listen.otlp_allowed_hosts, (std::vector<std::string>{"sidetrace", ".svc.example"}));
  EXPECT_TRUE(needs_restart("listen.otlp_allowed_hosts"));
  EXPECT_TRUE(Config{}.listen.otlp_allowed_hosts.empty());
  for (const char* bad : {"*", "", "http://agent.example", "agent.example:4318"}) {
    Config d;
    d.listen.otlp_allowed_hosts = {bad};
    EXPECT_NE(validate_error(d).find("listen.otlp_allowed_hosts"), std::string::npos) << bad;
  }
}

TEST(ConfigAdmin, TokenIsMasked) {
  Config c;
  c.admin.token = kToken;
  std::string text = to_toml(c);
  EXPECT_EQ(text.find(kToken), std::string::npos) << text;
  EXPECT_NE(text.find("token = \"***\""), std::string::npos) << text;
  EXPECT_NE(to_toml(c, false).find(kToken), std::string::npos);
  EXPECT_NE(to_toml(Config{}).find("token = \"\""), std::string::npos);
}

TEST_F(ConfigFileTest, AdminTokenFromAFile) {
  Config c;
  EXPECT_EQ(admin_token(c), "");
  c.admin.token = kToken;
  EXPECT_EQ(admin_token(c), kToken);

  auto file = (dir_ / "admin-token").string();
  std::ofstream(file) << "  " << kToken << "\n";
  Config f;
  f.admin.token_file = file;
  EXPECT_EQ(admin_token(f), kToken);

  std::ofstream(file) << "short\n";
  try {
    admin_token(f);
    ADD_FAILURE() << "a short token accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("admin.token_file"), std::string::npos) << e.what();
  }
  std::ofstream(file) << "\n";
  EXPECT_THROW(admin_token(f), ConfigError);
  f.admin.token_file = (dir_ / "missing").string();
  try {
    admin_token(f);
    ADD_FAILURE() << "a missing file accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("admin.token_file: cannot read"), std::string::npos)
        << e.what();
  }
}

TEST(ConfigAdmin, LoopbackListenAddresses) {
  EXPECT_TRUE(is_loopback_listen("127.0.0.1:7718"));
  EXPECT_TRUE(is_loopback_listen("127.255.0.1:7718"));
  EXPECT_TRUE(is_loopback_listen("LocalHost:7718"));
  EXPECT_TRUE(is_loopback_listen("[::1]:7718"));
  EXPECT_FALSE(is_loopback_listen("128.0.0.1:7718"));
  EXPECT_FALSE(is_loopback_listen("0.0.0.0:7718"));
  EXPECT_FALSE(is_loopback_listen("[::]:7718"));
  EXPECT_FALSE(is_loopback_listen("localhost.example:7718"));
  EXPECT_FALSE(is_loopback_listen("127.0.0.1"));
}

TEST(ConfigString, UpstreamTuningKeys) {
  Config c;
  EXPECT_EQ(c.upstream.retry_after_max_ms, 300000);
  EXPECT_EQ(c.upstream.auth_probe_interval_ms, 30000);
  EXPECT_EQ(c.upstream.compression_level, 1);
  apply_toml_string(c,
                    "[upstream]\nretry_after_max_ms = 1000\nauth_probe_interval_ms = 250\n"
                    "compression = \"zstd\"\ncompression_level = 12\n",
                    "inline.toml");
  EXPECT_EQ(c.upstream.retry_after_max_ms, 1000);
  EXPECT_EQ(c.upstream.auth_probe_interval_ms, 250);
  EXPECT_EQ(c.upstream.compression_level, 12);
  EXPECT_NO_THROW(validate(c));
  // Level 12 exists for zstd only; the error names the key.
  c.upstream.compression = "gzip";
  try {
    validate(c);
    ADD_FAILURE() << "gzip level 12 accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("upstream.compression_level"), std::string::npos);
  }
  Config d;
  EXPECT_THROW(apply_toml_string(d, "[upstream]\nauth_probe_interval_ms = 0\n", "inline.toml"),
               ConfigError);
}

// format "neuraltrust" is a known value; without an endpoint it sends to the
// NeuralTrust SDK's default base, while the other formats keep the file
// exporter.
TEST(ConfigString, NeuralTrustFormatAndItsDefaultEndpoint) {
  Config c;
  EXPECT_EQ(upstream_endpoint(c), "");
  apply_toml_string(c, "[upstream]\nformat = \"neuraltrust\"\n", "inline.toml");
  EXPECT_EQ(c.upstream.format, "neuraltrust");
  EXPECT_EQ(c.upstream.endpoint, "");
  EXPECT_EQ(upstream_endpoint(c), "https://api-prod.neuraltrust.ai");
  EXPECT_EQ(upstream_endpoint(c), defaults::kNeuralTrustEndpoint);
  EXPECT_NO_THROW(validate(c));
  apply_toml_string(c, "[upstream]\nendpoint = \"http://127.0.0.1:9/nt\"\n", "inline.toml");
  EXPECT_EQ(upstream_endpoint(c), "http://127.0.0.1:9/nt");
  Config otlp;
  apply_toml_string(otlp, "[upstream]\nformat = \"otlp\"\n", "inline.toml");
  EXPECT_EQ(upstream_endpoint(otlp), "");
  Config bad;
  EXPECT_THROW(apply_toml_string(bad, "[upstream]\nformat = \"neural\"\n", "inline.toml"),
               ConfigError);
}

TEST(ConfigToml, MasksSecretsAndRoundTrips) {
  Config c;
  c.upstream.endpoint = "https://user:hunter2@collector:4318";
  c.upstream.headers = {{"Authorization", "Bearer abc"}, {"X-Team", "llm"}};
  std::string text = to_toml(c);
  EXPECT_EQ(text.find("hunter2"), std::string::npos) << text;
  EXPECT_EQ(text.find("Bearer abc"), std::string::npos) << text;
  EXPECT_NE(text.find("\"llm\""), std::string::npos) << text;
  EXPECT_NE(text.find("socket_mode = \"0660\""), std::string::npos) << text;

  // Unmasked output reads back to the same configuration.
  auto dir =
      std::filesystem::temp_directory_path() / ("sidetrace-rt-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto path = (dir / "rt.toml").string();
  std::ofstream(path) << to_toml(c, false);
  Config back = load(path, {}, {});
  EXPECT_TRUE(changed_keys(c, back).empty());
  std::filesystem::remove_all(dir);
}

TEST(ConfigSizes, ParseUnits) {
  EXPECT_EQ(parse_size("2GiB"), 2ull << 30);
  EXPECT_EQ(parse_size("512 MiB"), 512ull << 20);
  EXPECT_EQ(parse_size("64k"), 64ull << 10);
  EXPECT_EQ(parse_size("1000"), 1000u);
  EXPECT_FALSE(parse_size("lots"));
  EXPECT_FALSE(parse_size("-1"));
  EXPECT_FALSE(parse_size("5 parsecs"));
}

TEST(ConfigReload, ChangedKeysAndRestartKeys) {
  Config a, b;
  b.log.level = "debug";
  b.data_dir = "/elsewhere";
  auto changed = changed_keys(a, b);
  ASSERT_EQ(changed.size(), 2u);
  EXPECT_EQ(changed[0], "data_dir");
  EXPECT_EQ(changed[1], "log.level");
  EXPECT_TRUE(needs_restart("data_dir"));
  EXPECT_FALSE(needs_restart("log.level"));
}

}  // namespace
}  // namespace sidetrace::config

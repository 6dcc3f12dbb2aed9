// A throwaway PKI for TLS tests, made with the openssl command-line tool:
// a CA, a server certificate for 127.0.0.1/localhost signed by it, a client
// certificate signed by it (mTLS), and an unrelated second CA.
//
// Thread safety: make_test_pki() writes only below `dir`.
#pragma once

#include <string>

namespace sidetrace::upstream::testing {

struct TestPki {
  std::string ca_cert;
  std::string server_cert;  // SAN: IP 127.0.0.1, DNS localhost
  std::string server_key;
  std::string client_cert;
  std::string client_key;
  std::string other_ca_cert;    // a CA that signed nothing here
  std::string wrong_host_cert;  // signed by the CA, SAN: DNS wrong.example only
  std::string wrong_host_key;
};

// Creates the files under `dir` (which must exist). Throws std::runtime_error
// when openssl fails.
TestPki make_test_pki(const std::string& dir);

}  // namespace sidetrace::upstream::testing

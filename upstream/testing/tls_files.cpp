#include "upstream/testing/tls_files.h"

#include <cstdlib>
#include <fstream>
#include <stdexcept>

namespace sidetrace::upstream::testing {

namespace {

void run(const std::string& cmd) {
  std::string full = cmd + " >/dev/null 2>&1";
  if (std::system(full.c_str()) != 0) throw std::runtime_error("command failed: " + cmd);
}

void make_ca(const std::string& dir, const std::string& name) {
  run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "
      "/CN=" +
      name + " -keyout " + dir + "/" + name + ".key -out " + dir + "/" + name + ".pem");
}

void make_leaf(const std::string& dir, const std::string& name, const std::string& ca,
               const std::string& ext) {
  std::string base = dir + "/" + name;
  run("openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=" + name +
      " -keyout " + base + ".key -out " + base + ".csr");
  std::ofstream(base + ".ext") << ext << "\n";
  run("openssl x509 -req -in " + base + ".csr -CA " + dir + "/" + ca + ".pem -CAkey " + dir + "/" +
      ca + ".key -CAcreateserial -days 2 -extfile " + base + ".ext -out " + base + ".pem");
}

}  // namespace

TestPki make_test_pki(const std::string& dir) {
  make_ca(dir, "ca");
  make_ca(dir, "other-ca");
  make_leaf(dir, "server", "ca",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth");
  make_leaf(dir, "client", "ca", "extendedKeyUsage=clientAuth");
  make_leaf(dir, "wrong", "ca", "subjectAltName=DNS:wrong.example\nextendedKeyUsage=serverAuth");
  TestPki p;
  p.ca_cert = dir + "/ca.pem";
  p.other_ca_cert = dir + "/other-ca.pem";
  p.server_cert = dir + "/server.pem";
  p.server_key = dir + "/server.key";
  p.client_cert = dir + "/client.pem";
  p.client_key = dir + "/client.key";
  p.wrong_host_cert = dir + "/wrong.pem";
  p.wrong_host_key = dir + "/wrong.key";
  return p;
}

}  // namespace sidetrace::upstream::testing

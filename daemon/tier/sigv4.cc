// SigV4: canonical request, string to sign, the derived key's HMAC.
#include "daemon/tier/sigv4.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <ctime>

#include "daemon/base/strings.h"
#include "daemon/tier/object_store.h"

namespace ckptd::tier {
namespace {

std::string Hmac(std::string_view key, std::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out, &n);
  return std::string(reinterpret_cast<char*>(out), n);
}

std::string Hex(std::string_view bin) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bin) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

// Header values are signed trimmed, with runs of spaces folded to one.
std::string Trimmed(std::string_view v) {
  std::string out;
  bool space = false;
  for (char c : v) {
    if (c == ' ' || c == '\t') {
      space = !out.empty();
      continue;
    }
    if (space) out.push_back(' ');
    space = false;
    out.push_back(c);
  }
  return out;
}

}  // namespace

std::string SignV4(const SigV4Request& r, const SigV4Key& key) {
  std::string canonical_headers, signed_headers;
  for (const auto& [name, value] : r.headers) {  // std::map: sorted by name
    StrAppend(&canonical_headers, name, ":", Trimmed(value), "\n");
    StrAppend(&signed_headers, signed_headers.empty() ? "" : ";", name);
  }
  const std::string canonical =
      StrCat(r.method, "\n", r.canonical_uri, "\n", r.canonical_query, "\n", canonical_headers,
             "\n", signed_headers, "\n", r.payload_sha256_hex);
  const std::string date = r.amz_date.substr(0, 8);
  const std::string scope = StrCat(date, "/", key.region, "/", key.service, "/aws4_request");
  const std::string to_sign =
      StrCat("AWS4-HMAC-SHA256\n", r.amz_date, "\n", scope, "\n", Sha256Hex(canonical));
  std::string k = Hmac(StrCat("AWS4", key.secret_key), date);
  k = Hmac(k, key.region);
  k = Hmac(k, key.service);
  k = Hmac(k, "aws4_request");
  return StrCat("AWS4-HMAC-SHA256 Credential=", key.access_key, "/", scope,
                ", SignedHeaders=", signed_headers, ", Signature=", Hex(Hmac(k, to_sign)));
}

std::string AmzDate(double unix_seconds) {
  const std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &tm);
  return buf;
}

}  // namespace ckptd::tier

// The parts of the object-store contract every implementation shares:
// paging, ETags, which errors are transient.
#include "daemon/tier/object_store.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cstring>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"

namespace ckptd::tier {
namespace {

std::string Hex(const unsigned char* p, size_t n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(n * 2, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kDigits[p[i] >> 4];
    out[2 * i + 1] = kDigits[p[i] & 15];
  }
  return out;
}

std::string HexDigest(const EVP_MD* md, std::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(data.data(), data.size(), out, &n, md, nullptr);
  return Hex(out, n);
}

}  // namespace

bool IsTransient(const absl::Status& st) {
  return absl::IsUnavailable(st) || absl::IsDeadlineExceeded(st);
}

bool IsNoSuchUpload(const absl::Status& st) {
  return absl::IsNotFound(st) && st.message().find("NoSuchUpload") != std::string_view::npos;
}

std::string Md5Hex(std::string_view data) { return HexDigest(EVP_md5(), data); }

Md5Stream::Md5Stream() : ctx_(EVP_MD_CTX_new()) {
  EVP_DigestInit_ex(static_cast<EVP_MD_CTX*>(ctx_), EVP_md5(), nullptr);
}
Md5Stream::~Md5Stream() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_)); }
void Md5Stream::Update(std::string_view data) {
  EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data.data(), data.size());
}
std::string Md5Stream::FinishHex() {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), out, &n);
  EVP_DigestInit_ex(static_cast<EVP_MD_CTX*>(ctx_), EVP_md5(), nullptr);
  return Hex(out, n);
}
std::string Sha256Hex(std::string_view data) { return HexDigest(EVP_sha256(), data); }

std::string MultipartEtag(const std::vector<std::string>& part_md5_hex) {
  std::string bin;
  for (const std::string& hex : part_md5_hex) {
    for (size_t i = 0; i + 1 < hex.size(); i += 2) {
      bin.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
    }
  }
  return StrCat(Md5Hex(bin), "-", part_md5_hex.size());
}

absl::StatusOr<std::vector<ObjectInfo>> ObjectStore::List(const std::string& prefix) {
  std::vector<ObjectInfo> out;
  std::string token;
  do {
    CKPTD_ASSIGN_OR_RETURN(ListPage page, ListPageOf(prefix, token));
    if (!page.next_token.empty() && page.next_token == token) {
      return absl::FailedPreconditionError(
          StrCat("list ", prefix, ": the store returned the same continuation token twice"));
    }
    for (ObjectInfo& o : page.objects) out.push_back(std::move(o));
    token = std::move(page.next_token);
  } while (!token.empty());
  return out;
}

absl::Status ObjectSource::ReadAt(uint64_t offset, size_t n, void* dst) const {
  if (offset > size_ || n > size_ - offset) {
    return absl::OutOfRangeError(StrCat("read of ", n, " bytes at offset ", offset,
                                        " past the end of ", key_, " (", size_, " bytes)"));
  }
  auto* out = static_cast<char*>(dst);
  while (n > 0) {
    if (offset < at_ || offset >= at_ + cache_.size()) {
      const uint64_t length = std::min<uint64_t>(std::max(window_, n), size_ - offset);
      CKPTD_ASSIGN_OR_RETURN(cache_, store_->Get(key_, ByteRange{offset, length}));
      at_ = offset;
      fetched_ += cache_.size();
    }
    const size_t k = std::min<uint64_t>(n, at_ + cache_.size() - offset);
    std::memcpy(out, cache_.data() + (offset - at_), k);
    out += k;
    offset += k;
    n -= k;
  }
  return absl::OkStatus();
}

}  // namespace ckptd::tier

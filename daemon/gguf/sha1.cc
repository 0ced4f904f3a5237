// SHA-1 and the gguf-hash uuid worker.
#include "daemon/gguf/sha1.h"

#include <fmt/format.h>
#include <openssl/evp.h>

namespace ckptd::gguf {

struct Sha1::Ctx {
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  ~Ctx() { EVP_MD_CTX_free(md); }
};

Sha1::Sha1() : ctx_(std::make_unique<Ctx>()) { EVP_DigestInit_ex(ctx_->md, EVP_sha1(), nullptr); }
Sha1::~Sha1() = default;

void Sha1::Update(const void* data, size_t n) { EVP_DigestUpdate(ctx_->md, data, n); }

std::array<uint8_t, 20> Sha1::Finish() {
  std::array<uint8_t, 20> out{};
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx_->md, out.data(), &len);
  return out;
}

std::string UuidV5FromSha1(const std::array<uint8_t, 20>& h) {
  std::array<uint8_t, 16> b;
  std::copy(h.begin(), h.begin() + 16, b.begin());
  b[6] = static_cast<uint8_t>((b[6] & 0x0f) | 0x50);  // version 5
  b[8] = static_cast<uint8_t>((b[8] & 0x3f) | 0x80);  // variant 10xx
  std::string hex;
  for (size_t i = 0; i < b.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) hex += '-';
    hex += fmt::format("{:02x}", b[i]);
  }
  return hex;
}

GgufHashWorker::GgufHashWorker() {
  sha_.Update(kGgufHashNamespace.data(), kGgufHashNamespace.size());
  thread_ = std::thread([this] { Loop(); });
}

GgufHashWorker::~GgufHashWorker() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void GgufHashWorker::Loop() {
  std::unique_lock lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return busy_ || stop_; });
    if (stop_) return;
    const void* data = data_;
    size_t n = n_;
    lock.unlock();
    sha_.Update(data, n);
    lock.lock();
    busy_ = false;
    cv_.notify_all();
  }
}

void GgufHashWorker::Submit(const void* data, size_t n) {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return !busy_; });
  data_ = data;
  n_ = n;
  busy_ = true;
  cv_.notify_all();
}

void GgufHashWorker::Wait() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return !busy_; });
}

std::string GgufHashWorker::FinishUuid() {
  Wait();
  return UuidV5FromSha1(sha_.Finish());
}

}  // namespace ckptd::gguf

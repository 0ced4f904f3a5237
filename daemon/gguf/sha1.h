// SHA-1 for llama.cpp's gguf-hash uuid (UUIDv5 over the tensor bytes in
// file order, namespace ef001206-dadc-5f6d-a15f-3359e577d4e5), hashed on a
// worker thread so a writer overlaps it with its own work.
#pragma once

#include <array>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace ckptd::gguf {

inline constexpr std::array<uint8_t, 16> kGgufHashNamespace = {
    0xef, 0x00, 0x12, 0x06, 0xda, 0xdc, 0x5f, 0x6d, 0xa1, 0x5f, 0x33, 0x59, 0xe5, 0x77, 0xd4, 0xe5};

// Incremental SHA-1 (OpenSSL EVP). Not thread-safe.
class Sha1 {
 public:
  Sha1();
  ~Sha1();
  Sha1(const Sha1&) = delete;
  Sha1& operator=(const Sha1&) = delete;
  void Update(const void* data, size_t n);
  std::array<uint8_t, 20> Finish();

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

// UUIDv5 string from the SHA-1 of (namespace bytes + name).
std::string UuidV5FromSha1(const std::array<uint8_t, 20>& sha1);

// A gguf-hash uuid computed on a worker thread: Submit() hands over a chunk
// and returns at once; the chunk must stay valid until Wait() returns.
class GgufHashWorker {
 public:
  GgufHashWorker();
  ~GgufHashWorker();
  void Submit(const void* data, size_t n);
  void Wait();  // until the submitted chunk has been hashed
  std::string FinishUuid();

 private:
  void Loop();

  Sha1 sha_;
  std::mutex mu_;  // std::mutex for TSan (see posix_writable_file.cc)
  std::condition_variable cv_;
  const void* data_ = nullptr;
  size_t n_ = 0;
  bool busy_ = false;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace ckptd::gguf

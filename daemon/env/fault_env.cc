// Fault-injecting Env twin.
#include "daemon/env/fault_env.h"

#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "absl/strings/numbers.h"
#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/env/posix_error.h"

namespace ckptd::env {
namespace {

enum Op { kOpen, kWrite, kSync, kClose, kRename, kSymlink, kSyncDir, kRemove, kOpCount };
constexpr std::array<std::string_view, kOpCount> kOpNames = {
    "open", "write", "sync", "close", "rename", "symlink", "syncdir", "remove"};

struct Rules {
  std::array<uint64_t, kOpCount> crash_before{};
  std::array<uint64_t, kOpCount> crash_after{};
  std::array<uint64_t, kOpCount> fail_at{};
  std::array<int, kOpCount> fail_errno{};
  std::array<uint64_t, kOpCount> delay_ms{};
  uint64_t enospc_after_bytes = 0;  // 0 = never
};

absl::StatusOr<Op> ParseOp(std::string_view name) {
  for (int i = 0; i < kOpCount; ++i) {
    if (kOpNames[i] == name) return static_cast<Op>(i);
  }
  return absl::InvalidArgumentError(StrCat("fault spec: unknown operation '", name, "'"));
}

absl::StatusOr<int> ParseErrno(std::string_view name) {
  static const std::pair<std::string_view, int> kErrnos[] = {
      {"ENOSPC", ENOSPC}, {"EIO", EIO}, {"EDQUOT", EDQUOT}, {"EACCES", EACCES}, {"EROFS", EROFS}};
  for (auto [n, e] : kErrnos) {
    if (n == name) return e;
  }
  return absl::InvalidArgumentError(StrCat("fault spec: unknown errno '", name, "'"));
}

absl::StatusOr<Rules> ParseSpec(const std::string& spec) {
  Rules rules;
  for (const std::string& rule : Split(spec, ';', true)) {
    std::vector<std::string> kv = Split(rule, '=');
    if (kv.size() != 2)
      return absl::InvalidArgumentError(StrCat("fault spec: bad rule '", rule, "'"));
    std::vector<std::string> args = Split(kv[1], ':');
    uint64_t n = 0;
    if (kv[0] == "enospc_after_bytes") {
      if (!absl::SimpleAtoi(kv[1], &n))
        return absl::InvalidArgumentError("fault spec: bad byte count");
      rules.enospc_after_bytes = n;
      continue;
    }
    if (args.size() < 2 || !absl::SimpleAtoi(args[1], &n)) {
      return absl::InvalidArgumentError(StrCat("fault spec: '", rule, "' needs OP:N"));
    }
    CKPTD_ASSIGN_OR_RETURN(Op op, ParseOp(args[0]));
    if (kv[0] == "crash_before") {
      rules.crash_before[op] = n;
    } else if (kv[0] == "crash_after") {
      rules.crash_after[op] = n;
    } else if (kv[0] == "delay") {
      rules.delay_ms[op] = n;
    } else if (kv[0] == "fail" && args.size() == 3) {
      rules.fail_at[op] = n;
      CKPTD_ASSIGN_OR_RETURN(rules.fail_errno[op], ParseErrno(args[2]));
    } else {
      return absl::InvalidArgumentError(StrCat("fault spec: unknown rule '", rule, "'"));
    }
  }
  return rules;
}

// Shared by the env and the files it opens.
class Faults {
 public:
  explicit Faults(Rules rules) : rules_(rules) {}

  // Runs `call` as the next `op`, applying the rules around it.
  template <typename F>
  auto Run(Op op, std::string_view what, F&& call) -> decltype(call()) {
    uint64_t n = ++counts_[op];
    if (rules_.delay_ms[op] > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(rules_.delay_ms[op]));
    }
    if (rules_.crash_before[op] == n) Crash(op, n, "before");
    if (rules_.fail_at[op] == n)
      return PosixError(StrCat(kOpNames[op], " ", what), rules_.fail_errno[op]);
    auto result = call();
    if (rules_.crash_after[op] == n) Crash(op, n, "after");
    return result;
  }

  absl::Status ChargeBytes(size_t n, std::string_view what) {
    uint64_t total = bytes_ += n;
    if (rules_.enospc_after_bytes > 0 && total > rules_.enospc_after_bytes) {
      return PosixError(StrCat("write ", what), ENOSPC);
    }
    return absl::OkStatus();
  }

 private:
  [[noreturn]] static void Crash(Op op, uint64_t n, const char* when) {
    char msg[128];
    int len = std::snprintf(msg, sizeof msg, "fault injection: crash %s %s #%llu\n", when,
                            kOpNames[op].data(), static_cast<unsigned long long>(n));
    (void)!::write(2, msg, static_cast<size_t>(len));
    ::_exit(kCrashExitCode);
  }

  Rules rules_;
  std::array<std::atomic<uint64_t>, kOpCount> counts_{};
  std::atomic<uint64_t> bytes_{0};
};

class FaultWritableFile final : public WritableFile {
 public:
  FaultWritableFile(std::unique_ptr<WritableFile> base, std::shared_ptr<Faults> faults)
      : base_(std::move(base)), faults_(std::move(faults)) {}

  absl::Status Append(std::string_view data) override {
    return faults_->Run(kWrite, path(), [&] {
      CKPTD_TRY(faults_->ChargeBytes(data.size(), path()));
      return base_->Append(data);
    });
  }
  absl::Status AppendStable(std::string_view data) override {
    return faults_->Run(kWrite, path(), [&] {
      CKPTD_TRY(faults_->ChargeBytes(data.size(), path()));
      return base_->AppendStable(data);
    });
  }
  uint64_t zero_copy_bytes() const override { return base_->zero_copy_bytes(); }
  absl::Status AppendClone(const RandomAccessFile& src, uint64_t src_offset, uint64_t n) override {
    return faults_->Run(kWrite, path(), [&] { return base_->AppendClone(src, src_offset, n); });
  }
  uint64_t cloned_bytes() const override { return base_->cloned_bytes(); }
  absl::Status WriteAt(uint64_t offset, std::string_view data) override {
    return faults_->Run(kWrite, path(), [&] { return base_->WriteAt(offset, data); });
  }
  absl::Status Sync() override {
    return faults_->Run(kSync, path(), [&] { return base_->Sync(); });
  }
  absl::Status Close() override {
    return faults_->Run(kClose, path(), [&] { return base_->Close(); });
  }
  uint64_t size() const override { return base_->size(); }
  bool direct() const override { return base_->direct(); }
  const std::string& path() const override { return base_->path(); }

 private:
  std::unique_ptr<WritableFile> base_;
  std::shared_ptr<Faults> faults_;
};

class FaultInjectionEnv final : public EnvWrapper {
 public:
  FaultInjectionEnv(Env* base, Rules rules)
      : EnvWrapper(base), faults_(std::make_shared<Faults>(rules)) {}

  absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path,
                                                                DirectIo direct) override {
    return faults_->Run(kOpen, path, [&]() -> absl::StatusOr<std::unique_ptr<WritableFile>> {
      CKPTD_ASSIGN_OR_RETURN(auto file, target()->NewWritableFile(path, direct));
      return std::unique_ptr<WritableFile>(new FaultWritableFile(std::move(file), faults_));
    });
  }
  absl::Status RenameFile(const std::string& from, const std::string& to) override {
    return faults_->Run(kRename, to, [&] { return target()->RenameFile(from, to); });
  }
  absl::Status Symlink(const std::string& target_name, const std::string& link) override {
    return faults_->Run(kSymlink, link, [&] { return target()->Symlink(target_name, link); });
  }
  absl::Status SyncDir(const std::string& dir) override {
    return faults_->Run(kSyncDir, dir, [&] { return target()->SyncDir(dir); });
  }
  absl::Status RemoveFile(const std::string& path) override {
    return faults_->Run(kRemove, path, [&] { return target()->RemoveFile(path); });
  }

 private:
  std::shared_ptr<Faults> faults_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Env>> NewFaultInjectionEnv(Env* base, const std::string& spec) {
  CKPTD_ASSIGN_OR_RETURN(Rules rules, ParseSpec(spec));
  return std::unique_ptr<Env>(new FaultInjectionEnv(base, rules));
}

}  // namespace ckptd::env

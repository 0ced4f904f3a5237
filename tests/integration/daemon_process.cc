// Spawning and watching the ckptd binary.
#include "tests/integration/daemon_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

namespace ckptd::testing {

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

namespace {

int ExitCode(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

pid_t Spawn(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
            const std::string& out_path, const std::string& err_path,
            std::optional<std::pair<uint64_t, uint64_t>> nofile = std::nullopt) {
  pid_t pid = ::fork();
  if (pid != 0) return pid;
  if (nofile) {
    rlimit lim{.rlim_cur = nofile->first, .rlim_max = nofile->second};
    if (::setrlimit(RLIMIT_NOFILE, &lim) != 0) ::_exit(126);
  }
  for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
  int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
  ::dup2(out, 1);
  ::dup2(err, 2);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  ::execv(args[0], args.data());
  ::_exit(127);
}

}  // namespace

DaemonProcess::DaemonProcess(DaemonOptions options)
    : options_(std::move(options)),
      socket_(options_.root + "/ckptd.sock"),
      target_(options_.listen.empty() ? "unix:" + socket_ : options_.listen),
      log_(options_.log.empty() ? options_.root + "/../ckptd-" + std::to_string(::getpid()) + ".log"
                                : options_.log) {}

DaemonProcess::~DaemonProcess() {
  if (pid_ > 0) Stop(SIGKILL);
}

void DaemonProcess::Start() {
  target_ = options_.listen.empty() ? "unix:" + socket_ : options_.listen;
  std::vector<std::string> argv = {CKPTD_BINARY,  "--root", options_.root,   "--listen",   target_,
                                   "--log-level", "debug",  "--http-listen", "127.0.0.1:0"};
  argv.insert(argv.end(), options_.extra_args.begin(), options_.extra_args.end());
  std::filesystem::remove(socket_);              // a previous daemon's socket would answer nobody
  std::ofstream(log_, std::ios::trunc).close();  // before the child exists, so no stale "ready"
  pid_ = Spawn(argv, options_.env, "/dev/null", log_, options_.nofile);
  // Connect only once the daemon says it listens: a channel whose first
  // attempt fails backs off for a second or more.
  for (int i = 0; i < 1000 && Log().find("ready: listening") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (target_.ends_with(":0")) {  // a free port the daemon picked: its ready line names it
    const std::string log = Log(), marker = "ready: listening on ";
    if (size_t at = log.find(marker); at != std::string::npos) {
      at += marker.size();
      target_ = log.substr(at, log.find('\n', at) - at);
    }
  }
  auto client = Connect();
  for (int i = 0; i < 400; ++i) {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      FAIL() << "ckptd exited with " << ExitCode(status) << " during startup:\n" << Log();
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
    v1::ListRunsResponse resp;
    if (client->stub().ListRuns(&ctx, {}, &resp).ok()) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  FAIL() << "ckptd did not answer within 20 s:\n" << Log();
}

int DaemonProcess::Stop(int sig) {
  if (pid_ <= 0) return -1;
  ::kill(pid_, sig);
  return Wait();
}

int DaemonProcess::Wait() {
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
  return ExitCode(status);
}

std::unique_ptr<Client> DaemonProcess::Connect(ClientOptions options) const {
  return *Client::Connect(target_, options);
}

std::string DaemonProcess::Log() const { return Slurp(log_); }

uint64_t DaemonProcess::PeakRssBytes() const {
  std::istringstream in(Slurp("/proc/" + std::to_string(pid_) + "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with("VmHWM:")) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

int DaemonProcess::HttpPort() const {
  const std::string log = Log();
  const std::string marker = "http: listening on 127.0.0.1:";
  size_t at = log.find(marker);
  return at == std::string::npos ? -1 : std::stoi(log.substr(at + marker.size()));
}

HttpResponse HttpGet(int port, const std::string& target) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  HttpResponse r;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return r;
  }
  std::string req = "GET " + target + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
  (void)!::write(fd, req.data(), req.size());
  std::string raw;
  char buf[65536];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) raw.append(buf, static_cast<size_t>(n));
  ::close(fd);
  size_t end = raw.find("\r\n\r\n");
  if (raw.size() < 12 || end == std::string::npos) return r;
  r.status = std::stoi(raw.substr(9, 3));
  std::string head = raw.substr(0, end);
  size_t ct = head.find("Content-Type: ");
  if (ct != std::string::npos)
    r.content_type = head.substr(ct + 14, head.find("\r\n", ct) - ct - 14);
  r.body = raw.substr(end + 4);
  return r;
}

int DaemonProcess::OpenFds() const {
  int n = 0;
  for ([[maybe_unused]] const auto& e :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid_) + "/fd")) {
    ++n;
  }
  return n;
}

CommandResult RunCommand(const std::vector<std::string>& argv,
                         const std::map<std::string, std::string>& env) {
  char out_tmpl[] = "/tmp/ckptd-cmd-out-XXXXXX";
  char err_tmpl[] = "/tmp/ckptd-cmd-err-XXXXXX";
  ::close(::mkstemp(out_tmpl));
  ::close(::mkstemp(err_tmpl));
  pid_t pid = Spawn(argv, env, out_tmpl, err_tmpl);
  int status = 0;
  ::waitpid(pid, &status, 0);
  CommandResult r{ExitCode(status), Slurp(out_tmpl), Slurp(err_tmpl)};
  ::unlink(out_tmpl);
  ::unlink(err_tmpl);
  return r;
}

}  // namespace ckptd::testing

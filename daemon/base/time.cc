// Time helpers.
#include "daemon/base/time.h"

#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <ctime>

namespace ckptd {

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string FormatUtc(double seconds) {
  time_t whole = static_cast<time_t>(seconds);
  int ms = static_cast<int>((seconds - static_cast<double>(whole)) * 1000);
  struct tm tm;
  gmtime_r(&whole, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  return fmt::format("{}.{:03d}Z", buf, ms);
}

double ParseUtc(const std::string& s) {
  struct tm tm = {};
  int ms = 0;
  if (std::sscanf(s.c_str(), "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                  &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) < 6) {
    return 0;
  }
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return static_cast<double>(timegm(&tm)) + ms / 1000.0;
}

}  // namespace ckptd

// Wall-clock time as the daemon records it: seconds since the epoch, and
// RFC 3339 UTC with milliseconds ("2026-11-24T09:10:39.381Z").
#pragma once

#include <string>

namespace ckptd {

double NowSeconds();
std::string FormatUtc(double seconds);
// FormatUtc's output back to seconds; 0 when unparseable.
double ParseUtc(const std::string& s);

}  // namespace ckptd

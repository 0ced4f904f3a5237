// Server-Sent Events framing of a run's events: "event: committed|failed|
// deleted" and a data line with the RunEvent in protobuf's JSON mapping.
#pragma once

#include <string>
#include <string_view>

#include "daemon/scheduler/run_registry.h"

namespace ckptd::http {

inline constexpr std::string_view kSseKeepAlive = ": keep-alive\n\n";

std::string SseHead(const std::string& run_id);  // status line, headers, a comment
std::string SseEvent(const scheduler::Event& e);

}  // namespace ckptd::http

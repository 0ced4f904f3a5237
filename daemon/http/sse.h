// Server-Sent Events framing of a run's events: "id: EPOCH-N" (the run
// object's event epoch and the event's number, what a reconnecting client
// sends back as Last-Event-ID), "event: committed|failed|deleted|..." and a
// data line with the RunEvent in protobuf's JSON mapping.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "daemon/scheduler/run_registry.h"

namespace ckptd::http {

inline constexpr std::string_view kSseKeepAlive = ": keep-alive\n\n";

// Status line, headers, a comment; `waiting`: the run is not open yet.
std::string SseHead(const std::string& run_id, bool waiting = false);
std::string SseEvent(const scheduler::Event& e, std::string_view epoch);
// Events were missed and cannot be given again: those after `last_event_id`
// are no longer kept, or it names another run object's (a restarted daemon).
std::string SseGap(std::string_view last_event_id);
// Last-Event-ID as SseEvent wrote it: the event number when `epoch` is
// this run object's; nullopt when it is not (or is malformed).
std::optional<uint64_t> ParseLastEventId(std::string_view id, std::string_view epoch);

}  // namespace ckptd::http

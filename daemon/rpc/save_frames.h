// The Save stream's data messages without protobuf's copy. A SaveRequest
// whose only field is `data` is, on the wire, the tag 0x12, the payload's
// length as a varint, and the payload. The raw Save handler receives each
// message as gRPC's slices and, where a message has exactly that form, hands
// the payload to the writer as views into those slices: the bytes are copied
// once, into the writer's aligned buffer, instead of twice. Any other form
// (a header, unknown fields, a non-canonical tag, a length that does not
// match) is left to protobuf, which decides what the message means, so the
// fast path never accepts a message protobuf would read differently.
// Client side, EncodeDataPrefix is the same framing for a payload sent as
// its own slice.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ckptd::rpc {

// The payload of a serialized SaveRequest that holds only `data`, as views
// into `message` (the message's bytes, in slices of any size, empty slices
// allowed); nullopt when the message has any other form. Views of an empty
// payload are an empty vector.
std::optional<std::vector<std::string_view>> DataPayload(std::span<const std::string_view> message);

// The bytes that come before a `data` payload of `size` bytes in a
// SaveRequest holding only that field (the tag and the varint length).
std::string EncodeDataPrefix(uint64_t size);

}  // namespace ckptd::rpc

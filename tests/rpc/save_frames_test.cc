// The Save stream's data framing: exactly protobuf's reading of a message
// holding only `data`, across any slicing, and nothing else.
#include "daemon/rpc/save_frames.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "ckptd/v1/ckptd.pb.h"

namespace ckptd::rpc {
namespace {

// `bytes` cut at every offset in `cuts` (ascending), empty pieces included.
std::vector<std::string_view> Cut(std::string_view bytes, std::vector<size_t> cuts) {
  std::vector<std::string_view> out;
  size_t at = 0;
  for (size_t c : cuts) {
    out.push_back(bytes.substr(at, c - at));
    at = c;
  }
  out.push_back(bytes.substr(at));
  return out;
}

std::string Joined(const std::vector<std::string_view>& pieces) {
  std::string out;
  for (std::string_view p : pieces) out.append(p);
  return out;
}

std::string DataMessage(const std::string& payload) {
  v1::SaveRequest msg;
  msg.set_data(payload);
  return msg.SerializeAsString();
}

TEST(SaveFramesTest, ADataMessageIsItsPayloadAcrossEverySlicing) {
  for (size_t size : {0u, 1u, 127u, 128u, 300u, 16384u, 1u << 20}) {
    std::string payload(size, '\0');
    for (size_t i = 0; i < size; ++i) payload[i] = static_cast<char>(i * 7 + 3);
    const std::string wire = DataMessage(payload);
    for (size_t cut = 0; cut <= std::min<size_t>(wire.size(), 8); ++cut) {
      for (size_t second : {cut, cut + 1, wire.size()}) {
        if (second > wire.size()) continue;
        auto got = DataPayload(Cut(wire, {cut, second}));
        ASSERT_TRUE(got.has_value()) << "size " << size << " cut " << cut << "," << second;
        EXPECT_EQ(Joined(*got), payload) << "size " << size << " cut " << cut;
        for (std::string_view piece : *got) EXPECT_FALSE(piece.empty());
      }
    }
  }
}

TEST(SaveFramesTest, ThePrefixIsProtobufsOwn) {
  for (uint64_t size : {0ull, 1ull, 127ull, 128ull, 16383ull, 16384ull, 1ull << 20, 1ull << 30}) {
    const std::string prefix = EncodeDataPrefix(size);
    if (size <= (1u << 20)) {
      const std::string wire = DataMessage(std::string(size, 'x'));
      EXPECT_EQ(wire.substr(0, prefix.size()), prefix) << size;
      EXPECT_EQ(wire.size(), prefix.size() + size) << size;
    }
    std::string payload(size <= 4096 ? size : 0, 'y');
    if (payload.size() == size) {
      v1::SaveRequest back;
      ASSERT_TRUE(back.ParseFromString(prefix + payload)) << size;
      EXPECT_EQ(back.data(), payload);
    }
  }
}

TEST(SaveFramesTest, EveryOtherFormIsLeftToProtobuf) {
  v1::SaveRequest header;
  header.mutable_header()->set_run_id("r");
  header.mutable_header()->set_step(3);
  const std::string data = DataMessage("abcd");
  const std::vector<std::string> others = {
      "",                                       // no field: neither header nor data
      header.SerializeAsString(),               // a header
      data + data,                              // two data fields (protobuf: the last wins)
      data + std::string("\x18\x01", 2),        // data and an unknown varint field
      std::string("\x18\x01", 2) + data,        // an unknown field first
      data.substr(0, data.size() - 1),          // truncated payload
      data + "z",                               // a byte past the payload
      std::string("\x92\x00\x04", 3) + "abcd",  // the tag as a two-byte varint
      std::string("\x12\x84\x00", 3) + "abcd",  // the length as a non-minimal varint: same bytes
      std::string("\x12", 1),                   // a tag and no length
      std::string("\x12\x80", 2),               // a length that never ends
      std::string("\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 11),  // beyond 64 bits
  };
  for (size_t i = 0; i < others.size(); ++i) {
    const std::string& m = others[i];
    auto got = DataPayload(Cut(m, {}));
    if (i == 8) {
      // A non-minimal length still says 4: the fast path may take it, and
      // must then agree with protobuf.
      v1::SaveRequest parsed;
      ASSERT_TRUE(parsed.ParseFromString(m));
      if (got) {
        EXPECT_EQ(Joined(*got), parsed.data());
      }
      continue;
    }
    EXPECT_FALSE(got.has_value()) << "form " << i;
  }
}

}  // namespace
}  // namespace ckptd::rpc

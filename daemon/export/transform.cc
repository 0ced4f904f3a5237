// Byte-level tensor reshaping and dtype conversion for exports.
#include "daemon/export/transform.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "daemon/base/strings.h"
#include "daemon/gguf/convert.h"

namespace ckptd::exports {
namespace {

using gguf::TensorType;

uint64_t ElementSize(TensorType t) {
  return gguf::LookupTensorType(static_cast<uint32_t>(t))->block_bytes;
}

uint64_t Product(std::span<const uint64_t> ne, size_t from, size_t to) {
  uint64_t p = 1;
  for (size_t i = from; i < to && i < ne.size(); ++i) p *= ne[i];
  return p;
}

// Concatenates equally shaped members along `axis`.
void Fuse(std::span<const std::string_view> members, std::span<const uint64_t> member_ne, int axis,
          uint64_t es, std::string* out) {
  const uint64_t inner = Product(member_ne, 0, axis) * member_ne[axis] * es;  // one member's slab
  const uint64_t outer = Product(member_ne, axis + 1, member_ne.size());
  out->resize(inner * outer * members.size());
  char* dst = out->data();
  for (uint64_t o = 0; o < outer; ++o) {
    for (std::string_view m : members) {
      std::memcpy(dst, m.data() + o * inner, inner);
      dst += inner;
    }
  }
}

void SplitPart(std::string_view src, std::span<const uint64_t> src_ne, int axis, size_t part,
               size_t parts, uint64_t es, std::string* out) {
  const uint64_t slab = Product(src_ne, 0, axis) * src_ne[axis] * es;
  const uint64_t piece = slab / parts;
  const uint64_t outer = Product(src_ne, axis + 1, src_ne.size());
  out->resize(piece * outer);
  for (uint64_t o = 0; o < outer; ++o) {
    std::memcpy(out->data() + o * piece, src.data() + o * slab + part * piece, piece);
  }
}

void Rope(std::string_view src, uint64_t rows, uint64_t row_bytes, uint64_t heads,
          std::string* out) {
  out->resize(src.size());
  for (uint64_t r = 0; r < rows; ++r) {
    std::memcpy(out->data() + r * row_bytes, src.data() + RopeSourceRow(r, rows, heads) * row_bytes,
                row_bytes);
  }
}

// out dims: ne_out[i] = ne_in[perm[i]].
void Permute(std::string_view src, std::span<const uint64_t> ne_in, std::span<const int> perm,
             uint64_t es, std::string* out) {
  const size_t n = ne_in.size();
  uint64_t in_stride[4] = {0, 0, 0, 0}, ne_out[4] = {1, 1, 1, 1}, stride[4] = {0, 0, 0, 0};
  uint64_t s = es;
  for (size_t i = 0; i < n; ++i) in_stride[i] = s, s *= ne_in[i];
  for (size_t i = 0; i < n; ++i) ne_out[i] = ne_in[perm[i]], stride[i] = in_stride[perm[i]];
  out->resize(src.size());
  char* dst = out->data();
  for (uint64_t i3 = 0; i3 < ne_out[3]; ++i3) {
    for (uint64_t i2 = 0; i2 < ne_out[2]; ++i2) {
      for (uint64_t i1 = 0; i1 < ne_out[1]; ++i1) {
        const char* row = src.data() + i3 * stride[3] + i2 * stride[2] + i1 * stride[1];
        for (uint64_t i0 = 0; i0 < ne_out[0]; ++i0) {
          std::memcpy(dst, row + i0 * stride[0], es);
          dst += es;
        }
      }
    }
  }
}

float Load(TensorType t, const char* p) {
  switch (t) {
    case TensorType::kF16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return gguf::Fp16ToFp32(h);
    }
    case TensorType::kBF16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return gguf::Bf16ToFp32(h);
    }
    default: {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
  }
}

void LoadAll(std::string_view src, TensorType t, std::vector<float>* out) {
  const uint64_t es = ElementSize(t), n = src.size() / es;
  out->resize(n);
  for (uint64_t i = 0; i < n; ++i) (*out)[i] = Load(t, src.data() + i * es);
}

// W + scale * (B A), as PEFT merges: the product accumulated in f32 over
// the rank, scaled, then added. W is ne [in, out] (row o holds `in`
// elements), A ne [in, r], B ne [r, out]; the result is f32.
void MergeLora(const OutputRecipe& r, std::span<const std::string_view> src, std::string* out) {
  const uint64_t in = r.assembled_ne[0], rows = r.assembled_ne[1], rank = r.lora_rank;
  std::vector<float> w, a, b;
  LoadAll(src[0], r.lora_types[0], &w);
  LoadAll(src[1], r.lora_types[1], &a);
  LoadAll(src[2], r.lora_types[2], &b);
  std::vector<float> delta(in);
  for (uint64_t o = 0; o < rows; ++o) {
    std::fill(delta.begin(), delta.end(), 0.0F);
    for (uint64_t k = 0; k < rank; ++k) {
      const float bk = b[o * rank + k];
      const float* ak = a.data() + k * in;
      for (uint64_t i = 0; i < in; ++i) delta[i] += bk * ak[i];
    }
    float* wo = w.data() + o * in;
    for (uint64_t i = 0; i < in; ++i) wo[i] += delta[i] * r.lora_scale;
  }
  out->assign(reinterpret_cast<const char*>(w.data()), w.size() * sizeof(float));
}

}  // namespace

absl::Status ConvertElements(std::string_view src, TensorType from, TensorType to,
                             std::string* out) {
  const uint64_t in_es = ElementSize(from);
  const uint64_t n = src.size() / in_es;
  // Reused across calls: fresh pages cost far more than the conversion here.
  thread_local std::vector<float> f32;
  const float* values = nullptr;
  if (from == TensorType::kF32) {
    values = reinterpret_cast<const float*>(src.data());
    if (reinterpret_cast<uintptr_t>(values) % alignof(float) != 0) {
      if (f32.size() < n) f32.resize(n);
      std::memcpy(f32.data(), src.data(), n * 4);
      values = f32.data();
    }
  } else {
    if (f32.size() < n) f32.resize(n);
    for (uint64_t i = 0; i < n; ++i) f32[i] = Load(from, src.data() + i * in_es);
    values = f32.data();
  }
  switch (to) {
    case TensorType::kF32:
      out->assign(reinterpret_cast<const char*>(values), n * 4);
      return absl::OkStatus();
    case TensorType::kF16:
    case TensorType::kBF16: {
      out->resize(n * 2);
      for (uint64_t i = 0; i < n; ++i) {
        uint16_t h =
            to == TensorType::kF16 ? gguf::Fp32ToFp16(values[i]) : gguf::Fp32ToBf16(values[i]);
        std::memcpy(out->data() + i * 2, &h, 2);
      }
      return absl::OkStatus();
    }
    case TensorType::kQ8_0:
      out->resize(n / gguf::kQ8_0BlockElems * gguf::kQ8_0BlockBytes);
      return gguf::QuantizeQ8_0(std::span(values, n),
                                std::span(reinterpret_cast<uint8_t*>(out->data()), out->size()));
    default:
      break;
  }
  return absl::InvalidArgumentError(StrCat("no conversion to ggml type ", static_cast<int>(to)));
}

uint64_t RopeSourceRow(uint64_t r, uint64_t rows, uint64_t heads) {
  const uint64_t head_rows = rows / heads, half = head_rows / 2;
  const uint64_t h = r / head_rows, within = r % head_rows;
  const uint64_t i = within / 2, j = within % 2;  // output (h, i, j) <- input (h, j, i)
  return h * head_rows + j * half + i;
}

absl::Status BuildOutput(const OutputRecipe& r, std::span<const std::string_view> sources,
                         std::string* out) {
  const uint64_t es = ElementSize(r.element_type);
  std::string a, b;
  std::string_view cur;
  switch (r.kind) {
    case OutputRecipe::Kind::kCopy:
      if (r.merge_lora) {
        MergeLora(r, sources, &a);
        cur = a;
      } else {
        cur = sources[0];
      }
      break;
    case OutputRecipe::Kind::kFuse: {
      std::vector<uint64_t> member_ne = r.assembled_ne;
      member_ne[r.axis] /= r.sources.size();
      Fuse(sources, member_ne, r.axis, es, &a);
      cur = a;
      break;
    }
    case OutputRecipe::Kind::kSplit: {
      std::vector<uint64_t> src_ne = r.assembled_ne;
      src_ne[r.axis] *= r.parts;
      SplitPart(sources[0], src_ne, r.axis, r.part, r.parts, es, &a);
      cur = a;
      break;
    }
  }
  if (r.rope_heads != 0) {
    std::string& dst = cur.data() == a.data() ? b : a;
    Rope(cur, r.assembled_ne[1], r.assembled_ne[0] * es, r.rope_heads, &dst);
    cur = dst;
  }
  if (!r.permute.empty()) {
    std::string& dst = cur.data() == a.data() ? b : a;
    Permute(cur, r.assembled_ne, r.permute, es, &dst);
    cur = dst;
  }
  if (r.out.type == r.element_type) {
    out->assign(cur);
    return absl::OkStatus();
  }
  return ConvertElements(cur, r.element_type, r.out.type, out);
}

}  // namespace ckptd::exports

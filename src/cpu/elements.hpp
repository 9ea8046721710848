// Element types on the host: bf16 / fp16 <-> float conversion and row access.
#pragma once

#include <cstdint>
#include <cstring>

#include "proxyattn/proxyattn.h"

namespace proxyattn::cpu {

inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even; NaN stays NaN.
inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x0040u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return uint16_t(bits >> 16);
}

float half_to_float(uint16_t h);
uint16_t float_to_half(float f);  // round to nearest even, overflow to inf

// Reads d elements of a row of type dtype into float.
inline void load_row(const void* src, pa_dtype dtype, int d, float* out) {
  switch (dtype) {
    case PA_DTYPE_FLOAT32: std::memcpy(out, src, sizeof(float) * d); break;
    case PA_DTYPE_BFLOAT16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int i = 0; i < d; ++i) out[i] = bf16_to_float(s[i]);
      break;
    }
    case PA_DTYPE_FLOAT16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int i = 0; i < d; ++i) out[i] = half_to_float(s[i]);
      break;
    }
  }
}

inline void store_row(const float* in, pa_dtype dtype, int d, void* dst) {
  switch (dtype) {
    case PA_DTYPE_FLOAT32: std::memcpy(dst, in, sizeof(float) * d); break;
    case PA_DTYPE_BFLOAT16: {
      uint16_t* s = static_cast<uint16_t*>(dst);
      for (int i = 0; i < d; ++i) s[i] = float_to_bf16(in[i]);
      break;
    }
    case PA_DTYPE_FLOAT16: {
      uint16_t* s = static_cast<uint16_t*>(dst);
      for (int i = 0; i < d; ++i) s[i] = float_to_half(in[i]);
      break;
    }
  }
}

// The value a float takes once stored in dtype (what a kernel reading it back sees).
inline float round_to(pa_dtype dtype, float x) {
  switch (dtype) {
    case PA_DTYPE_BFLOAT16: return bf16_to_float(float_to_bf16(x));
    case PA_DTYPE_FLOAT16: return half_to_float(float_to_half(x));
    case PA_DTYPE_FLOAT32: break;
  }
  return x;
}

// Address of row (token, head) of a strided tensor of element size bytes.
inline const void* row_ptr(const pa_tensor& t, int bytes, int64_t token, int64_t head) {
  return static_cast<const char*>(t.data) + (token * t.token_stride + head * t.head_stride) * bytes;
}
inline void* row_ptr_mut(const pa_tensor& t, int bytes, int64_t token, int64_t head) {
  return static_cast<char*>(t.data) + (token * t.token_stride + head * t.head_stride) * bytes;
}

}  // namespace proxyattn::cpu

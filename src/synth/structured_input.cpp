#include "synth/structured_input.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/problem.hpp"
#include "core/status.hpp"
#include "cpu/elements.hpp"
#include "cpu/parallel.hpp"

namespace proxyattn::synth {
namespace {

// Shape of the structure. Positions in tokens; these describe the input, not the method.
constexpr int kSinkTokens = 4;            // tokens 0..3 act as attention sinks
constexpr int kVerticalEvery = 509;       // one vertical column per ~509 tokens (prime: no aliasing with blocks)
constexpr int kQuestionTokens = 32;       // tokens of a question that retrieves a needle
constexpr int kFinalAskTokens = 64;       // the last tokens ask for the needles again
constexpr double kMaxFrequency = 1.0;     // radians per token of the fastest position code
constexpr double kMinFrequency = 1.0 / 4096.0;
constexpr int kSlashOffsetsLog2Min = 6;   // slash offsets 64, 128, ... tokens
constexpr int kSlashOffsetsCount = 5;
constexpr int kMaxNeedles = 1024;         // params.num_needles: each has a direction per KV head
// Heads agree on which tokens matter (ProxyAttn's premise) and differ mostly in how
// sharply they attend: a per-head temperature scales all query gains, and each gain
// varies a little around it.
constexpr float kGainSpreadLow = 0.8f;
constexpr float kGainSpreadHigh = 1.2f;
constexpr float kTemperatureLow = 0.6f;
constexpr float kTemperatureHigh = 1.4f;

// Counter-based generator: every value is a hash of its coordinates, so the output does
// not depend on thread count or evaluation order.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
uint64_t key(uint64_t a, uint64_t b, uint64_t c = 0, uint64_t d = 0, uint64_t e = 0) {
  return mix(mix(mix(mix(mix(a) ^ b) ^ c) ^ d) ^ e);
}
double uniform(uint64_t h) { return (double(h >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
double normal(uint64_t h) {  // Box-Muller from two hashes
  const double u1 = uniform(h), u2 = uniform(mix(h));
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

enum Stream : uint64_t { kQNoise = 1, kKNoise, kVValue, kDirection, kGain, kPlace, kVMean };

struct HeadGains {
  float sink, local, vertical, slash, needle;
  int slash_offset;
};

struct Layout {
  int d, pos_dims, content_dims, freqs;
  std::vector<double> omega;
};

// Unit direction `which` of KV head kv in the content dims [pos_dims, d).
void direction(uint64_t seed, int kv, int which, const Layout& L, std::vector<float>& out) {
  out.assign(L.d, 0.0f);
  double norm = 0.0;
  for (int c = L.pos_dims; c < L.d; ++c) {
    out[c] = float(normal(key(seed, kDirection, kv, which, c)));
    norm += double(out[c]) * out[c];
  }
  const float inv = float(1.0 / std::sqrt(norm));
  for (int c = L.pos_dims; c < L.d; ++c) out[c] *= inv;
}

void position_code(int64_t t, const Layout& L, float gain, float* out) {
  const double amp = gain / std::sqrt(double(L.freqs));
  for (int f = 0; f < L.freqs; ++f) {
    out[2 * f] += float(amp * std::cos(L.omega[f] * double(t)));
    out[2 * f + 1] += float(amp * std::sin(L.omega[f] * double(t)));
  }
}

}  // namespace

pa_synth_params default_params(uint64_t seed) {
  pa_synth_params p{};
  p.seed = seed;
  p.num_needles = 4;
  p.sink_strength = 14.0f;
  p.local_strength = 10.0f;
  p.vertical_strength = 6.0f;
  p.slash_strength = 6.0f;
  p.needle_strength = 16.0f;
  p.noise = 0.5f;
  return p;
}

pa_status generate(const pa_problem& problem, const pa_synth_params& params, void* q, void* k,
                   void* v) {
  const int d = problem.head_dim, hq = problem.num_q_heads, hkv = problem.num_kv_heads;
  if (d < 4)
    return fail(PA_STATUS_UNSUPPORTED, "problem.head_dim = %d: the generator needs head_dim >= 4", d);
  // A whole prompt: Q, K and V of total_tokens rows (keys of a chunk or pages of a cache are
  // other row counts, which the generator does not write).
  if (is_chunked(problem))
    return fail(PA_STATUS_UNSUPPORTED, "pa_synth_generate: problem.cu_seqlens_k is set; the generator "
                "makes whole prompts (Q, K and V of problem.total_tokens rows)");
  // The needles' directions and positions are allocated per needle: bounded, so that no int of
  // the caller's asks for gigabytes (the fuzzer's out-of-memory) or overflows 2 + num_needles.
  if (params.num_needles < 0 || params.num_needles > kMaxNeedles)
    return fail(PA_STATUS_INVALID_CONFIG, "params.num_needles = %d: must lie in [0, %d]", params.num_needles,
                kMaxNeedles);
  if (!(params.noise >= 0.0f))
    return fail(PA_STATUS_INVALID_CONFIG, "params.noise = %g: must be >= 0", double(params.noise));
  Layout L;
  L.d = d;
  L.freqs = d / 4;  // half of the dims carry position codes: d/4 (cos, sin) pairs
  L.pos_dims = 2 * L.freqs;
  L.content_dims = d - L.pos_dims;
  for (int f = 0; f < L.freqs; ++f) {
    const double a = L.freqs > 1 ? double(f) / (L.freqs - 1) : 0.0;
    L.omega.push_back(std::exp(std::log(kMaxFrequency) + a * (std::log(kMinFrequency) - std::log(kMaxFrequency))));
  }
  // Logit contribution g from unit vectors needs |q||k| = g sqrt(d): root = d^(1/4) each side.
  const float root = float(std::pow(double(d), 0.25));
  const float noise_amp = std::sqrt(params.noise);
  const int bytes = dtype_bytes(problem.dtype);
  const int per_kv = hq / hkv;
  const int needles = params.num_needles;

  for (int s = 0; s < problem.num_seqs; ++s) {
    const int64_t t0 = problem.cu_seqlens ? problem.cu_seqlens[s] : 0;
    const int64_t n = (problem.cu_seqlens ? problem.cu_seqlens[s + 1] : problem.total_tokens) - t0;
    if (n == 0) continue;
    const uint64_t seed = key(params.seed, uint64_t(s));

    std::vector<HeadGains> gains(hq);
    for (int h = 0; h < hq; ++h) {
      auto spread = [&](int which) {
        return float(kGainSpreadLow + (kGainSpreadHigh - kGainSpreadLow) * uniform(key(seed, kGain, h, which)));
      };
      const float temp = float(kTemperatureLow + (kTemperatureHigh - kTemperatureLow) * uniform(key(seed, kGain, h, 99)));
      gains[h] = {temp * params.sink_strength * spread(0), temp * params.local_strength * spread(1),
                  temp * params.vertical_strength * spread(2), temp * params.slash_strength * spread(3),
                  temp * params.needle_strength * spread(4),
                  1 << (kSlashOffsetsLog2Min + int(key(seed, kGain, h / per_kv, 5) % kSlashOffsetsCount))};
    }
    // Needle positions in the middle 80% of the sequence, and where their questions sit.
    std::vector<int64_t> needle_at(needles), question_at(needles);
    for (int i = 0; i < needles; ++i) {
      needle_at[i] = int64_t(n * (0.1 + 0.8 * uniform(key(seed, kPlace, i))));
      const int64_t room = std::max<int64_t>(1, n - needle_at[i] - kQuestionTokens);
      question_at[i] = needle_at[i] + 1 + int64_t(uniform(key(seed, kPlace, i, 1)) * room);
    }
    auto is_vertical = [&](int64_t t) { return t >= kSinkTokens && key(seed, kPlace, t, 7) % kVerticalEvery == 0; };
    // Needle asked by query t, or -1.
    auto asked = [&](int64_t t) -> int {
      if (needles == 0) return -1;
      if (t >= n - kFinalAskTokens) return int(t % needles);
      for (int i = 0; i < needles; ++i)
        if (t >= question_at[i] && t < question_at[i] + kQuestionTokens) return i;
      return -1;
    };

    // Directions per KV head: 0 sink, 1 vertical, 2.. needles.
    std::vector<std::vector<float>> dirs(size_t(hkv) * (2 + needles));
    for (int kv = 0; kv < hkv; ++kv)
      for (int w = 0; w < 2 + needles; ++w) direction(seed, kv, w, L, dirs[kv * (2 + needles) + w]);
    auto dir = [&](int kv, int w) -> const float* { return dirs[kv * (2 + needles) + w].data(); };

    cpu::parallel_for(n, [&](int, int64_t t) {
      std::vector<float> row(d);
      const int ask = asked(t);
      for (int h = 0; h < hq; ++h) {  // queries
        const HeadGains& g = gains[h];
        const int kv = h / per_kv;
        for (int c = 0; c < d; ++c) row[c] = noise_amp * float(normal(key(seed, kQNoise, t, h, c)));
        position_code(t, L, root * g.local, row.data());
        position_code(t - g.slash_offset, L, root * g.slash, row.data());
        for (int c = L.pos_dims; c < d; ++c) {
          row[c] += root * (g.sink * dir(kv, 0)[c] + g.vertical * dir(kv, 1)[c]);
          if (ask >= 0) row[c] += root * g.needle * dir(kv, 2 + ask)[c];
        }
        cpu::store_row(row.data(), problem.dtype, d,
                       static_cast<char*>(q) + ((t0 + t) * hq + h) * int64_t(d) * bytes);
      }
      int needle = -1;
      for (int i = 0; i < needles; ++i)
        if (needle_at[i] == t) needle = i;
      for (int kv = 0; kv < hkv; ++kv) {  // keys and values
        for (int c = 0; c < d; ++c) row[c] = noise_amp * float(normal(key(seed, kKNoise, t, kv, c)));
        position_code(t, L, root, row.data());
        for (int c = L.pos_dims; c < d; ++c) {
          if (t < kSinkTokens) row[c] += root * dir(kv, 0)[c];
          if (is_vertical(t)) row[c] += root * dir(kv, 1)[c];
          if (needle >= 0) row[c] += root * dir(kv, 2 + needle)[c];
        }
        cpu::store_row(row.data(), problem.dtype, d,
                       static_cast<char*>(k) + ((t0 + t) * hkv + kv) * int64_t(d) * bytes);
        // Values: a per-KV-head mean (channels carry a bias, as in trained models) plus noise.
        for (int c = 0; c < d; ++c)
          row[c] = float(normal(key(seed, kVMean, kv, c)) + normal(key(seed, kVValue, t, kv, c)));
        cpu::store_row(row.data(), problem.dtype, d,
                       static_cast<char*>(v) + ((t0 + t) * hkv + kv) * int64_t(d) * bytes);
      }
    });
  }
  return PA_STATUS_SUCCESS;
}

}  // namespace proxyattn::synth

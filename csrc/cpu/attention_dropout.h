// Attention dropout masks, drawn in-kernel (scsa_kernels/ops/dropout.py has the definition):
// the attention weight of sample b, row channel c (global index) and column j of its head,
// element e = (b*C + c)*d + j, is kept, scaled by 1/(1-p), when word e % 4 of Triton's
// tl.randint4x(seed, e // 4) (Philox4x32-10: key = seed's low and high words, counter =
// (e // 4 low, high words, 0, 0)), mapped to [0, 1) as tl.rand maps it, is >= p. Bit for bit the
// Triton kernels' masks; one Philox call gives four elements.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <optional>

#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace scsa_kernels::cpu {

namespace philox {
constexpr uint32_t kKeyA = 0x9E3779B9, kKeyB = 0xBB67AE85;      // Weyl increments of the key
constexpr uint32_t kRoundA = 0xD2511F53, kRoundB = 0xCD9E8D57;  // round multipliers
// Counters per call: up to kChains groups of 8 (one AVX2 register per word). The ten rounds are a
// serial chain of multiplies, so independent groups run interleaved: 3 groups cut the forward's
// dropout cost at 512x7x7 from 4.3 to 1.9 ms (4 no better). A call computes all of its counters,
// so a row's last 8 or fewer take one group.
constexpr int kChains = 3;

inline uint32_t mul_hi(uint32_t a, uint32_t b) { return uint32_t((uint64_t(a) * b) >> 32); }

#if defined(CPU_CAPABILITY_AVX2)
// High words of the 32x32-bit products of 8 lanes (AVX2 multiplies even lanes to 64 bits).
inline __m256i mul_hi(__m256i a, __m256i k) {
  const __m256i even = _mm256_mul_epu32(a, k);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), k);
  return _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// Philox4x32-10 of the counters (n low, n high, 0, 0), n = first .. first + 8 * chains - 1, key =
// seed: words[4 * l + w] = output word w of counter first + l (tl.randint4x's order).
template <int chains>
inline void randint4x_lanes(uint64_t seed, uint64_t first, uint32_t* words) {
  constexpr int64_t kLanes = 8 * chains;
  alignas(32) uint32_t lo[kLanes], hi[kLanes], out[4][kLanes];
  for (int64_t l = 0; l < kLanes; ++l) lo[l] = uint32_t(first + l), hi[l] = uint32_t((first + l) >> 32);
  __m256i c0[chains], c1[chains], c2[chains], c3[chains];
  for (int i = 0; i < chains; ++i) {
    c0[i] = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo + 8 * i));
    c1[i] = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi + 8 * i));
    c2[i] = c3[i] = _mm256_setzero_si256();
  }
  const __m256i round_a = _mm256_set1_epi32(int32_t(kRoundA)), round_b = _mm256_set1_epi32(int32_t(kRoundB));
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const __m256i key0 = _mm256_set1_epi32(int32_t(k0)), key1 = _mm256_set1_epi32(int32_t(k1));
    for (int i = 0; i < chains; ++i) {
      const __m256i c0_prev = c0[i], c2_prev = c2[i];
      c0[i] = _mm256_xor_si256(_mm256_xor_si256(mul_hi(c2_prev, round_b), c1[i]), key0);
      c2[i] = _mm256_xor_si256(_mm256_xor_si256(mul_hi(c0_prev, round_a), c3[i]), key1);
      c1[i] = _mm256_mullo_epi32(c2_prev, round_b);
      c3[i] = _mm256_mullo_epi32(c0_prev, round_a);
    }
    k0 += kKeyA;
    k1 += kKeyB;
  }
  for (int i = 0; i < chains; ++i) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(out[0] + 8 * i), c0[i]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(out[1] + 8 * i), c1[i]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(out[2] + 8 * i), c2[i]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(out[3] + 8 * i), c3[i]);
  }
  for (int64_t l = 0; l < kLanes; ++l)
    for (int w = 0; w < 4; ++w) words[4 * l + w] = out[w][l];
}
#else
template <int chains>
inline void randint4x_lanes(uint64_t seed, uint64_t first, uint32_t* words) {
  for (int64_t l = 0; l < 8 * chains; ++l) {
    uint32_t c0 = uint32_t(first + l), c1 = uint32_t((first + l) >> 32), c2 = 0, c3 = 0;
    uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      const uint32_t c0_prev = c0, c2_prev = c2;
      c0 = mul_hi(kRoundB, c2_prev) ^ c1 ^ k0;
      c2 = mul_hi(kRoundA, c0_prev) ^ c3 ^ k1;
      c1 = kRoundB * c2_prev;
      c3 = kRoundA * c0_prev;
      k0 += kKeyA;
      k1 += kKeyB;
    }
    words[4 * l] = c0, words[4 * l + 1] = c1, words[4 * l + 2] = c2, words[4 * l + 3] = c3;
  }
}
#endif

// triton.language.random.uint_to_uniform_float: [0, 1) in float32.
inline float uniform(uint32_t bits) {
  const int32_t v = int32_t(bits);
  return float(v < 0 ? ~v : v) * 4.6566127342e-10f;
}
}  // namespace philox

// The dropout of one call: off when p == 0.
struct AttentionDropout {
  double p = 0;
  uint64_t seed = 0;

  bool active() const { return p > 0; }

  // M of sample b, row channel c, columns [0, d) of its head: 0 or 1/(1-p), into scales.
  template <typename T>
  void row_scales(int64_t b, int64_t C, int64_t c, int64_t d, T* scales) const {
    const float threshold = float(p);  // compared in float32, as the Triton kernels do
    const T kept = T(1) / (T(1) - T(p));
    const uint64_t begin = uint64_t((b * C + c) * d), end = begin + uint64_t(d);
    uint32_t words[4 * 8 * philox::kChains];
    for (uint64_t counter = begin / 4, lanes; counter * 4 < end; counter += lanes) {
      lanes = end - counter * 4 > 4 * 8 ? 8 * philox::kChains : 8;
      if (lanes > 8)
        philox::randint4x_lanes<philox::kChains>(seed, counter, words);
      else
        philox::randint4x_lanes<1>(seed, counter, words);
      const uint64_t first = counter * 4, last = std::min(end, first + 4 * lanes);
      for (uint64_t e = std::max(begin, first); e < last; ++e)
        scales[e - begin] = philox::uniform(words[e - first]) >= threshold ? kept : T(0);
    }
  }
};

// From the ops' (dropout_p, dropout_seed) arguments: the seed is a (1,) int64 tensor, needed when p > 0.
inline AttentionDropout attention_dropout(double p, const std::optional<at::Tensor>& seed) {
  TORCH_CHECK(p >= 0 && p < 1, "scsa_kernels: dropout_p must be in [0, 1), got ", p);
  if (p == 0) return {};
  TORCH_CHECK(seed.has_value() && seed->numel() == 1 && seed->scalar_type() == at::kLong,
              "scsa_kernels: dropout_p > 0 needs dropout_seed, a one-element int64 tensor");
  return {p, uint64_t(seed->item<int64_t>())};
}

}  // namespace scsa_kernels::cpu

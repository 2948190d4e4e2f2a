// Double-quantized block scales without a gather (AVX-512 BW), shared by the
// AVX-512 matmul and dequantize kernels. Include only from files compiled
// for AVX-512.
//
// A DQ block scale is nested_code[q] * nested_absmax + offset with q one byte
// per block: a lookup in a 256-entry fp32 table. vgatherdps did it at 6.5 ns
// per 16 blocks on the Zen 5 VM this was written on, a third of the int8
// matvec's time per weight byte. Here the table's fp32 bit patterns are split
// into two 256-entry tables of 16-bit halves (low, high), each held in 8 zmm
// registers as 4 pieces of 64 words: vpermi2w looks 32 indices up in one
// piece (index bits 0-5), two masked blends pick the piece (bits 6 and 7),
// and vpunpck{l,h}wd glues the halves back into fp32 - the exact bits of
// nested_code[q], 2.3 ns per 16 blocks measured the same way.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace qlora::cpu::avx512 {

class NestedCodeLookup {
public:
    // words: qlora_q4_tensor::split_nested_code's 512 halves, or null for a
    // tensor without DQ (then lookup32 returns zeros)
    explicit NestedCodeLookup(const uint16_t * words) {
        for (int h = 0; h < 2; ++h)
            for (int p = 0; p < 4; ++p)
                for (int r = 0; r < 2; ++r)
                    t_[h][p][r] = words ? _mm512_loadu_si512(words + 256 * h + 64 * p + 32 * r) : _mm512_setzero_si512();
    }

    // c0 = nested_code[q[0..15]], c1 = nested_code[q[16..31]]; q[i] is read
    // for i < n only (n <= 32), lanes from n on hold nested_code[0].
    void lookup32(const uint8_t * q, int n, __m512 & c0, __m512 & c1) const {
        const __mmask32 m = n >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << n) - 1u);
        // vpunpck{l,h}wd interleave within 128-bit lanes: lane L of the low
        // result takes words 8L .. 8L+3, of the high one 8L+4 .. 8L+7. Moving
        // byte group (4 bytes) L to position 2L and group 4 + L to 2L + 1
        // first puts blocks 0..15 in the low result and 16..31 in the high one.
        const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        const __m512i idx = _mm512_cvtepu8_epi16(_mm256_permutexvar_epi32(order, _mm256_maskz_loadu_epi8(m, q)));
        const __mmask32 bit6 = _mm512_test_epi16_mask(idx, _mm512_set1_epi16(64));
        const __mmask32 bit7 = _mm512_test_epi16_mask(idx, _mm512_set1_epi16(128));
        __m512i half[2];
        for (int h = 0; h < 2; ++h) {
            const __m512i p0 = _mm512_permutex2var_epi16(t_[h][0][0], idx, t_[h][0][1]);
            const __m512i p1 = _mm512_permutex2var_epi16(t_[h][1][0], idx, t_[h][1][1]);
            const __m512i p2 = _mm512_permutex2var_epi16(t_[h][2][0], idx, t_[h][2][1]);
            const __m512i p3 = _mm512_permutex2var_epi16(t_[h][3][0], idx, t_[h][3][1]);
            half[h] = _mm512_mask_blend_epi16(bit7, _mm512_mask_blend_epi16(bit6, p0, p1),
                                              _mm512_mask_blend_epi16(bit6, p2, p3));
        }
        c0 = _mm512_castsi512_ps(_mm512_unpacklo_epi16(half[0], half[1]));
        c1 = _mm512_castsi512_ps(_mm512_unpackhi_epi16(half[0], half[1]));
    }

private:
    __m512i t_[2][4][2]; // [low/high half][piece of 64 entries][32 words each]
};

} // namespace qlora::cpu::avx512

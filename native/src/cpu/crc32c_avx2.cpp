// CRC32C with the SSE4.2 crc32 instruction (every AVX2 CPU has it). Three
// independent streams hide the instruction's 3-cycle latency; they are joined
// by shifting the first two CRCs over the bytes that followed them (a
// carry-less multiply by x^(8*len) mod P, via PCLMULQDQ).
#include "pager/crc32c.hpp"

#include <cstring>
#include <immintrin.h>

namespace qlora::cpu {

namespace {

// x^n mod P (reflected, bit-reversed representation), by square-and-multiply.
uint32_t gf2_multiply(uint32_t a, uint32_t b) {
    // Reflected multiply of two 32-bit polynomials modulo P.
    uint32_t product = 0;
    for (int i = 0; i < 32; ++i) {
        if (a & 0x80000000u) product ^= b;
        a <<= 1;
        b = (b & 1) ? (b >> 1) ^ 0x82F63B78u : b >> 1;
    }
    return product;
}

uint32_t x_pow_8n(size_t n) {
    // x^(8n) mod P in reflected form; x^0 = 0x80000000.
    uint32_t result = 0x80000000u, base = 0x00800000u; // base = x^8
    while (n) {
        if (n & 1) result = gf2_multiply(result, base);
        base = gf2_multiply(base, base);
        n >>= 1;
    }
    return result;
}

// crc (of some prefix) advanced over `n` zero bytes, given k = x^(8n) mod P.
__attribute__((target("sse4.2,pclmul"))) inline uint32_t shift(uint32_t crc, uint32_t k) {
    const __m128i a = _mm_cvtsi32_si128(static_cast<int>(crc));
    const __m128i b = _mm_cvtsi32_si128(static_cast<int>(k));
    const uint64_t prod = static_cast<uint64_t>(_mm_cvtsi128_si64(_mm_clmulepi64_si128(a, b, 0))) << 1;
    return static_cast<uint32_t>(_mm_crc32_u32(0, static_cast<uint32_t>(prod)) ^ (prod >> 32));
}

inline uint64_t load64(const uint8_t * p) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
}

} // namespace

__attribute__((target("sse4.2,pclmul"))) uint32_t crc32c_update_hw(uint32_t crc, const void * data, size_t n) {
    const auto * p = static_cast<const uint8_t *>(data);
    uint64_t c0 = static_cast<uint32_t>(~crc);
    constexpr size_t kStream = 8192; // bytes per stream per round
    if (n >= 3 * kStream) {
        static const uint32_t k1 = x_pow_8n(kStream), k2 = x_pow_8n(2 * kStream);
        while (n >= 3 * kStream) {
            uint64_t c1 = 0, c2 = 0;
            const uint8_t * p1 = p + kStream;
            const uint8_t * p2 = p + 2 * kStream;
            for (size_t i = 0; i < kStream; i += 8) {
                c0 = _mm_crc32_u64(c0, load64(p + i));
                c1 = _mm_crc32_u64(c1, load64(p1 + i));
                c2 = _mm_crc32_u64(c2, load64(p2 + i));
            }
            c0 = shift(static_cast<uint32_t>(c0), k2) ^ shift(static_cast<uint32_t>(c1), k1) ^ c2;
            p += 3 * kStream;
            n -= 3 * kStream;
        }
    }
    for (; n >= 8; n -= 8, p += 8) c0 = _mm_crc32_u64(c0, load64(p));
    uint32_t c = static_cast<uint32_t>(c0);
    for (; n > 0; --n) c = _mm_crc32_u8(c, *p++);
    return ~c;
}

} // namespace qlora::cpu

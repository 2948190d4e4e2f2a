#include "pager/crc32c.hpp"

#include "core/cpu_features.hpp"

#include <array>

namespace qlora {

namespace {

// Slicing-by-8 tables: t[0] is the classic byte table, t[k][b] advances the
// CRC of byte b by k further zero bytes.
struct Tables {
    std::array<std::array<uint32_t, 256>, 8> t{};
    Tables() {
        for (uint32_t b = 0; b < 256; ++b) {
            uint32_t c = b;
            for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
            t[0][b] = c;
        }
        for (uint32_t b = 0; b < 256; ++b)
            for (int k = 1; k < 8; ++k) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xff];
    }
};

const Tables & tables() {
    static const Tables tab;
    return tab;
}

} // namespace

uint32_t crc32c_update_sw(uint32_t crc, const void * data, size_t n) {
    const auto & t = tables().t;
    const auto * p = static_cast<const uint8_t *>(data);
    uint32_t c = ~crc;
    while (n >= 8) {
        const uint32_t lo = c ^ (uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24);
        const uint32_t hi = uint32_t(p[4]) | uint32_t(p[5]) << 8 | uint32_t(p[6]) << 16 | uint32_t(p[7]) << 24;
        c = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^
            t[3][hi & 0xff] ^ t[2][(hi >> 8) & 0xff] ^ t[1][(hi >> 16) & 0xff] ^ t[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) c = (c >> 8) ^ t[0][(c ^ *p++) & 0xff];
    return ~c;
}

uint32_t crc32c_update(uint32_t crc, const void * data, size_t n) {
#if defined(QLORA_X86)
    static const bool hw = detect_cpu_isa() >= QLORA_ISA_AVX2;
    if (hw) return cpu::crc32c_update_hw(crc, data, n);
#endif
    return crc32c_update_sw(crc, data, n);
}

} // namespace qlora

// CRC32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of spill
// pages and optimizer state files. crc32c("123456789") = 0xE3069283.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qlora {

// Continues a CRC: crc32c_update(0, a) then crc32c_update(that, b) equals
// crc32c of a followed by b. Uses the SSE4.2 instruction when the CPU has it.
uint32_t crc32c_update(uint32_t crc, const void * data, size_t n);
inline uint32_t crc32c(const void * data, size_t n) { return crc32c_update(0, data, n); }

// The portable table-driven version (the oracle of the hardware one).
uint32_t crc32c_update_sw(uint32_t crc, const void * data, size_t n);

namespace cpu {
// SSE4.2 crc32 instruction; call only when detect_cpu_isa() >= QLORA_ISA_AVX2.
uint32_t crc32c_update_hw(uint32_t crc, const void * data, size_t n);
} // namespace cpu

} // namespace qlora

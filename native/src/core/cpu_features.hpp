#pragma once
#include "qlora.h"

namespace qlora {
// Highest ISA level the CPU and OS support (cached after the first call).
qlora_cpu_isa detect_cpu_isa();
const char * cpu_isa_name(qlora_cpu_isa isa);
const char * cpu_isa_name_raw(int32_t isa); // "unknown" outside the enum
// Number of hardware threads this process may use (affinity-aware).
int hardware_threads();
} // namespace qlora

#include "core/cpu_features.hpp"
#include "core/error.hpp"

#include <thread>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace qlora {

namespace {

#if defined(__x86_64__) || defined(_M_X64)
unsigned long long xgetbv0() {
    unsigned int eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return (static_cast<unsigned long long>(edx) << 32) | eax;
}

// The AMX tile state: XCR0 must enable XTILECFG and XTILEDATA (bits 17, 18),
// and Linux (5.16+) hands the 8 KB tile data state to a process only on
// request (arch_prctl ARCH_REQ_XCOMP_PERM); the grant covers every thread of
// the process, those started later included. Any failure means no AMX.
bool amx_usable(unsigned long long xcr0) {
    if ((xcr0 & 0x60000) != 0x60000) return false;
#if defined(__linux__)
    constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
}

qlora_cpu_isa detect_uncached() {
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return QLORA_ISA_SCALAR;
    const bool osxsave = (ecx >> 27) & 1, fma = (ecx >> 12) & 1, f16c = (ecx >> 29) & 1, avx = (ecx >> 28) & 1;
    if (!osxsave || !avx) return QLORA_ISA_SCALAR;
    const unsigned long long xcr0 = xgetbv0();
    const bool ymm_state = (xcr0 & 0x6) == 0x6;
    const bool zmm_state = (xcr0 & 0xe6) == 0xe6;
    if (!ymm_state) return QLORA_ISA_SCALAR;
    if (__get_cpuid_max(0, nullptr) < 7) return QLORA_ISA_SCALAR;
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    const bool avx2 = (ebx >> 5) & 1;
    const bool avx512f = (ebx >> 16) & 1, avx512dq = (ebx >> 17) & 1, avx512bw = (ebx >> 30) & 1,
               avx512vl = (ebx >> 31) & 1;
    const bool avx512vnni = (ecx >> 11) & 1; // every AVX512-BF16 CPU so far has it; the int8 matvec needs it
    if (!(avx2 && fma && f16c)) return QLORA_ISA_SCALAR;
    if (!(zmm_state && avx512f && avx512dq && avx512bw && avx512vl)) return QLORA_ISA_AVX2;
    const bool amx_bf16 = (edx >> 22) & 1, amx_tile = (edx >> 24) & 1;
    __cpuid_count(7, 1, eax, ebx, ecx, edx);
    const bool avx512bf16 = (eax >> 5) & 1;
    if (!(avx512bf16 && avx512vnni)) return QLORA_ISA_AVX512;
    return amx_bf16 && amx_tile && amx_usable(xcr0) ? QLORA_ISA_AMX_BF16 : QLORA_ISA_AVX512_BF16;
}
#else
qlora_cpu_isa detect_uncached() { return QLORA_ISA_SCALAR; }
#endif

} // namespace

qlora_cpu_isa detect_cpu_isa() {
    static const qlora_cpu_isa isa = detect_uncached();
    return isa;
}

const char * cpu_isa_name(qlora_cpu_isa isa) { return cpu_isa_name_raw(raw_enum(isa)); }

const char * cpu_isa_name_raw(int32_t isa) {
    switch (isa) {
        case QLORA_ISA_SCALAR: return "scalar";
        case QLORA_ISA_AVX2: return "avx2";
        case QLORA_ISA_AVX512: return "avx512";
        case QLORA_ISA_AVX512_BF16: return "avx512_bf16";
        case QLORA_ISA_AMX_BF16: return "amx_bf16";
        case QLORA_ISA_BEST: return "best";
    }
    return "unknown";
}

int hardware_threads() {
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
#endif
    unsigned n = std::thread::hardware_concurrency();
    return n > 0 ? static_cast<int>(n) : 1;
}

} // namespace qlora

extern "C" {
QLORA_API qlora_cpu_isa qlora_cpu_isa_detected(void) { return qlora::detect_cpu_isa(); }
// The argument is read as raw bytes: a caller may pass any int, and loading an
// out-of-range value as the enum type is undefined behaviour (found by fuzzing).
QLORA_API const char * qlora_cpu_isa_name(qlora_cpu_isa isa) { return qlora::cpu_isa_name_raw(qlora::raw_enum(isa)); }
}

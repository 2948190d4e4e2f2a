// CPU fused 4-bit matmul: ISA dispatch, and the portable build of the kernels
// (plain C++ loops; every element decoded on its own).
#define QLORA_MM_NS portable
#include "cpu/matmul_impl.hpp"
#include "cpu/matmul_cpu.hpp"

namespace qlora::cpu {

namespace portable {
namespace {

struct Ops : OpsBase<float> {
    static constexpr bool kFast = false; // natural order only
    static constexpr int  kLanes = 16, kRows = 4, kKC = 256, kMC = 64, kNC = 128;
    static constexpr bool kFwdPermuted = false;
    static int perm(int p) { return p; }

    static void pack_w_fwd_fast(const WView &, int64_t, int, int64_t, int, float *) {}
    static void pack_w_bwd_fast(const WView &, int64_t, int, int64_t, float *) {}
    static void matvec_fwd_fast(const MatmulArgs &, const WView &, const float *, int64_t, int64_t) {}
    static void matvec_bwd_fast(const MatmulArgs &, const WView &, const float *, int64_t, int64_t, float *) {}

    template <int R>
    static void kernel(const float * Bp, const float * Sp, int64_t sps, int steps, float * C, int64_t ldc, bool first) {
        float acc[R][kLanes];
        for (int j = 0; j < R; ++j)
            for (int l = 0; l < kLanes; ++l) acc[j][l] = first ? 0.0f : C[j * ldc + l];
        for (int r = 0; r < steps; ++r) {
            const float * b = Bp + r * kLanes;
            for (int j = 0; j < R; ++j) {
                const float s = Sp[j * sps + r];
                for (int l = 0; l < kLanes; ++l) acc[j][l] = acc[j][l] + b[l] * s;
            }
        }
        for (int j = 0; j < R; ++j)
            for (int l = 0; l < kLanes; ++l) C[j * ldc + l] = acc[j][l];
    }
};

} // namespace
} // namespace portable

void q4_matmul_portable(qlora_context & ctx, const MatmulArgs & a) { portable::run<portable::Ops>(ctx, a); }

void q4_matmul(qlora_context & ctx, const MatmulArgs & a) {
#if defined(QLORA_X86)
    switch (ctx.isa) {
        case QLORA_ISA_AMX_BF16:
        case QLORA_ISA_AVX512_BF16:
            if (a.int8_x && q4_matvec_int8_avx512(ctx, a)) return;
            if (a.x_dtype == QLORA_DTYPE_BF16)
                return ctx.isa == QLORA_ISA_AMX_BF16 ? q4_matmul_amx_bf16(ctx, a) : q4_matmul_avx512_bf16(ctx, a);
            return q4_matmul_avx512(ctx, a);
        case QLORA_ISA_AVX512: return q4_matmul_avx512(ctx, a);
        case QLORA_ISA_AVX2: return q4_matmul_avx2(ctx, a);
        default: break;
    }
#endif
    q4_matmul_portable(ctx, a);
}

} // namespace qlora::cpu

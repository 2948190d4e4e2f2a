#include "cpu/matmul_cpu.hpp"
namespace qlora::cpu { void q4_matmul_avx2(qlora_context & ctx, const MatmulArgs & a) { q4_matmul_portable(ctx, a); } }

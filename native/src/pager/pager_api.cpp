// C ABI of the pager (qlora.h, "Memory pager").
#include "core/error.hpp"
#include "pager/pager.hpp"

#include <climits>

namespace qlora {

void check_pager_params(const qlora_pager_params & p) {
    QLORA_CHECK_ARG(p.page_bytes >= 4096 && p.page_bytes <= (INT64_C(1) << 30) && (p.page_bytes & (p.page_bytes - 1)) == 0,
                    "page_bytes must be a power of two in [4096, 2^30], got %lld", static_cast<long long>(p.page_bytes));
    QLORA_CHECK_ARG(p.budget_bytes >= p.page_bytes,
                    "budget_bytes (%lld) is smaller than one page (page_bytes %lld)",
                    static_cast<long long>(p.budget_bytes), static_cast<long long>(p.page_bytes));
}

namespace {
Pager & checked(qlora_pager_t pager) {
    QLORA_CHECK_ARG(pager != nullptr && pager->impl, "pager must not be NULL");
    return *pager->impl;
}
} // namespace

} // namespace qlora

extern "C" {

QLORA_API qlora_pager_params qlora_pager_default_params(void) {
    qlora_pager_params p{};
    p.backing = QLORA_PAGER_HOST_SPILL_FILE;
    p.budget_bytes = INT64_MAX;
    p.page_bytes = INT64_C(1) << 20;
    p.spill_dir = nullptr;
    p.device = 0;
    return p;
}

QLORA_API qlora_status qlora_pager_create(const qlora_pager_params * params, qlora_pager_t * out) {
    return QLORA_GUARD({
        QLORA_CHECK_NOT_NULL(params);
        QLORA_CHECK_NOT_NULL(out);
        using namespace qlora;
        check_pager_params(*params);
        auto handle = std::make_unique<qlora_pager>();
        // Raw bytes: a caller may pass any int, and loading an out-of-range
        // value as the enum type is undefined behaviour (found by fuzzing).
        const int32_t backing = raw_enum(params->backing);
        switch (backing) {
            case QLORA_PAGER_HOST_SPILL_FILE: handle->impl = make_host_spill_pager(*params); break;
            case QLORA_PAGER_CUDA_UNIFIED:
#if defined(QLORA_CUDA)
                fail(QLORA_ERROR_UNSUPPORTED, "backing QLORA_PAGER_CUDA_UNIFIED is not implemented yet (this build has "
                     "the CUDA backend, but not its unified-memory pager)");
#else
                fail(QLORA_ERROR_UNSUPPORTED,
                     "backing QLORA_PAGER_CUDA_UNIFIED needs the CUDA backend (configure with -DQLORA_CUDA=ON)");
#endif
            default:
                fail(QLORA_ERROR_INVALID_ARGUMENT, "unknown backing value %d", backing);
        }
        *out = handle.release();
    });
}

QLORA_API void qlora_pager_free(qlora_pager_t pager) { delete pager; }

QLORA_API qlora_status qlora_pager_alloc(qlora_pager_t pager, int64_t bytes, int64_t * out_id) {
    return QLORA_GUARD({
        auto & p = qlora::checked(pager);
        QLORA_CHECK_NOT_NULL(out_id);
        *out_id = p.alloc(bytes);
    });
}

QLORA_API qlora_status qlora_pager_dealloc(qlora_pager_t pager, int64_t id) {
    return QLORA_GUARD({ qlora::checked(pager).dealloc(id); });
}

QLORA_API qlora_status qlora_pager_acquire(qlora_pager_t pager, int64_t id, int64_t offset, int64_t bytes,
                                           qlora_pager_access access, void ** out_ptr) {
    return QLORA_GUARD({
        auto & p = qlora::checked(pager);
        QLORA_CHECK_NOT_NULL(out_ptr);
        // Validate the enum from its bits: an out-of-range value must not be
        // used as a qlora_pager_access (undefined behaviour in C++).
        const int32_t mode = qlora::raw_enum(access);
        QLORA_CHECK_ARG(mode == QLORA_PAGER_READ || mode == QLORA_PAGER_READ_WRITE || mode == QLORA_PAGER_OVERWRITE,
                        "unknown access value %d", mode);
        *out_ptr = p.acquire(id, offset, bytes, static_cast<qlora_pager_access>(mode));
    });
}

QLORA_API qlora_status qlora_pager_release(qlora_pager_t pager, int64_t id, int64_t offset, int64_t bytes) {
    return QLORA_GUARD({ qlora::checked(pager).release(id, offset, bytes); });
}

QLORA_API qlora_status qlora_pager_trim(qlora_pager_t pager, int64_t target_bytes) {
    return QLORA_GUARD({ qlora::checked(pager).trim(target_bytes); });
}

QLORA_API qlora_status qlora_pager_get_stats(qlora_pager_t pager, qlora_pager_stats * out) {
    return QLORA_GUARD({
        auto & p = qlora::checked(pager);
        QLORA_CHECK_NOT_NULL(out);
        *out = p.stats();
    });
}

QLORA_API qlora_status qlora_pager_reset_stats(qlora_pager_t pager) {
    return QLORA_GUARD({ qlora::checked(pager).reset_stats(); });
}

} // extern "C"

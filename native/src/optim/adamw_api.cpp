// C ABI of the AdamW optimizer (qlora.h, "AdamW optimizer").
#include "core/context.hpp"
#include "core/error.hpp"
#include "optim/adamw.hpp"

namespace {
qlora_adamw & checked(qlora_adamw_t opt) {
    QLORA_CHECK_ARG(opt != nullptr, "optimizer must not be NULL");
    return *opt;
}
} // namespace

extern "C" {

QLORA_API qlora_adamw_params qlora_adamw_default_params(void) {
    qlora_adamw_params p{};
    p.state = QLORA_OPTIM_STATE_F32;
    p.lr = 1e-3f;
    p.beta1 = 0.9f;
    p.beta2 = 0.999f;
    p.eps = 1e-8f;
    p.weight_decay = 1e-2f;
    p.max_grad_norm = 0.0f;
    p.bias_correction = 1;
    return p;
}

QLORA_API qlora_status qlora_adamw_create(const qlora_adamw_params * params, qlora_pager_t pager, qlora_adamw_t * out) {
    return QLORA_GUARD({
        QLORA_CHECK_NOT_NULL(params);
        QLORA_CHECK_NOT_NULL(out);
        qlora::optim::check_adamw_params(*params);
        std::shared_ptr<qlora::Pager> impl;
        if (pager) {
            QLORA_CHECK_ARG(pager->impl != nullptr, "pager is not a valid handle");
            // Both backings serve every backend: managed memory is host-accessible,
            // and a CUDA step stages host pages through the device.
            impl = pager->impl;
        }
        *out = new qlora_adamw(*params, std::move(impl));
    });
}

QLORA_API void qlora_adamw_free(qlora_adamw_t opt) { delete opt; }

QLORA_API qlora_status qlora_adamw_add_buffer(qlora_adamw_t opt, int64_t numel, int32_t * out_index) {
    return QLORA_GUARD({
        auto & o = checked(opt);
        o.add_buffer(numel);
        if (out_index) *out_index = static_cast<int32_t>(o.buffers.size() - 1);
    });
}

QLORA_API qlora_status qlora_adamw_set_params(qlora_adamw_t opt, const qlora_adamw_params * params) {
    return QLORA_GUARD({
        auto & o = checked(opt);
        QLORA_CHECK_NOT_NULL(params);
        qlora::optim::check_adamw_params(*params);
        QLORA_CHECK_ARG(qlora::raw_enum(params->state) == qlora::raw_enum(o.params.state),
                        "the state type cannot change (optimizer: %d, params: %d)", qlora::raw_enum(o.params.state),
                        qlora::raw_enum(params->state));
        o.params = *params;
    });
}

QLORA_API qlora_status qlora_adamw_get_params(qlora_adamw_t opt, qlora_adamw_params * out) {
    return QLORA_GUARD({
        auto & o = checked(opt);
        QLORA_CHECK_NOT_NULL(out);
        *out = o.params;
    });
}

QLORA_API qlora_status qlora_adamw_get_info(qlora_adamw_t opt, qlora_adamw_info * out) {
    return QLORA_GUARD({
        auto & o = checked(opt);
        QLORA_CHECK_NOT_NULL(out);
        *out = o.info();
    });
}

QLORA_API qlora_status qlora_adamw_step(qlora_context_t ctx, qlora_adamw_t opt, const qlora_view * params,
                                        const qlora_view * grads, int32_t n_buffers, qlora_adamw_step_info * out) {
    return QLORA_GUARD({
        auto & c = qlora::checked(ctx);
        auto & o = checked(opt);
        const qlora_adamw_step_info info = o.step(c, params, grads, n_buffers);
        if (out) *out = info;
    });
}

QLORA_API qlora_status qlora_adamw_save(qlora_adamw_t opt, const char * path) {
    return QLORA_GUARD({
        auto & o = checked(opt);
        QLORA_CHECK_NOT_NULL(path);
        o.save(path);
    });
}

QLORA_API qlora_status qlora_adamw_load(qlora_adamw_t opt, const char * path) {
    return QLORA_GUARD({
        auto & o = checked(opt);
        QLORA_CHECK_NOT_NULL(path);
        o.load(path);
    });
}

} // extern "C"

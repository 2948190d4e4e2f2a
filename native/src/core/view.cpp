#include "core/view.hpp"

#include <string>

namespace qlora {

const char * dtype_name(qlora_dtype dtype) { return dtype_name_raw(raw_enum(dtype)); }

const char * dtype_name_raw(int32_t dtype) {
    switch (dtype) {
        case QLORA_DTYPE_F32: return "F32";
        case QLORA_DTYPE_F16: return "F16";
        case QLORA_DTYPE_BF16: return "BF16";
        case QLORA_DTYPE_U8: return "U8";
        case QLORA_DTYPE_I32: return "I32";
        case QLORA_DTYPE_I64: return "I64";
        case QLORA_DTYPE_F64: return "F64";
        case QLORA_DTYPE_I8: return "I8";
        case QLORA_DTYPE_I16: return "I16";
        case QLORA_DTYPE_U16: return "U16";
        case QLORA_DTYPE_U32: return "U32";
        case QLORA_DTYPE_U64: return "U64";
        case QLORA_DTYPE_BOOL: return "BOOL";
        case QLORA_DTYPE_F8_E4M3: return "F8_E4M3";
        case QLORA_DTYPE_F8_E5M2: return "F8_E5M2";
    }
    return "unknown";
}

ViewInfo check_view(const qlora_view * v, const char * name, std::initializer_list<qlora_dtype> allowed,
                    bool allow_device) {
    QLORA_CHECK_ARG(v != nullptr, "%s must not be NULL", name);
    const int32_t dtype = raw_enum(v->dtype);
    bool ok = false;
    std::string names;
    for (auto d : allowed) {
        ok = ok || d == dtype;
        if (!names.empty()) names += ", ";
        names += dtype_name(d);
    }
    QLORA_CHECK_ARG(ok, "%s has dtype %s (%d); expected one of %s", name, dtype_name_raw(dtype), dtype,
                    names.c_str());
    QLORA_CHECK_ARG(v->data != nullptr, "%s.data must not be NULL", name);
    QLORA_CHECK_ARG(v->rows >= 1 && v->cols >= 1, "%s has shape [%lld, %lld]; both dimensions must be >= 1", name,
                    static_cast<long long>(v->rows), static_cast<long long>(v->cols));
    QLORA_CHECK_ARG(v->rows <= (INT64_C(1) << 40) / v->cols, "%s has shape [%lld, %lld]; too many elements", name,
                    static_cast<long long>(v->rows), static_cast<long long>(v->cols));
    QLORA_CHECK_ARG(v->stride == 0 || v->stride >= v->cols, "%s has stride %lld smaller than its %lld columns", name,
                    static_cast<long long>(v->stride), static_cast<long long>(v->cols));
    if (!allow_device)
        QLORA_CHECK_ARG(v->device == QLORA_DEVICE_HOST, "%s is on device %d; this call needs host memory", name,
                        v->device);
    else
        QLORA_CHECK_ARG(v->device >= QLORA_DEVICE_HOST, "%s has invalid device %d", name, v->device);
    return ViewInfo{v->data, v->dtype, v->device, v->rows, v->cols, v->stride == 0 ? v->cols : v->stride};
}

ViewInfo check_contiguous(const qlora_view * v, const char * name, std::initializer_list<qlora_dtype> allowed,
                          bool allow_device) {
    ViewInfo info = check_view(v, name, allowed, allow_device);
    QLORA_CHECK_ARG(info.contiguous(), "%s must be contiguous (stride %lld != cols %lld)", name,
                    static_cast<long long>(info.stride), static_cast<long long>(info.cols));
    return info;
}

} // namespace qlora

#include "core/error.hpp"

#include <string>

namespace qlora {
namespace {
thread_local std::string t_last_error;
}
void set_last_error(const std::string & message) {
    try { t_last_error = message; } catch (...) { /* keep the old message rather than throw */ }
}
void clear_last_error() { t_last_error.clear(); }
} // namespace qlora

extern "C" {

QLORA_API const char * qlora_status_string(qlora_status status) {
    switch (qlora::raw_enum(status)) {
        case QLORA_OK: return "QLORA_OK";
        case QLORA_ERROR_INVALID_ARGUMENT: return "QLORA_ERROR_INVALID_ARGUMENT";
        case QLORA_ERROR_OUT_OF_MEMORY: return "QLORA_ERROR_OUT_OF_MEMORY";
        case QLORA_ERROR_BUFFER_TOO_SMALL: return "QLORA_ERROR_BUFFER_TOO_SMALL";
        case QLORA_ERROR_UNSUPPORTED: return "QLORA_ERROR_UNSUPPORTED";
        case QLORA_ERROR_IO: return "QLORA_ERROR_IO";
        case QLORA_ERROR_FORMAT: return "QLORA_ERROR_FORMAT";
        case QLORA_ERROR_CUDA: return "QLORA_ERROR_CUDA";
        case QLORA_ERROR_INTERNAL: return "QLORA_ERROR_INTERNAL";
    }
    return "QLORA_ERROR_UNKNOWN";
}

QLORA_API const char * qlora_last_error(void) { return qlora::t_last_error.c_str(); }

QLORA_API const char * qlora_version(void) { return QLORA_VERSION_STRING; }

QLORA_API int32_t qlora_abi_version(void) { return QLORA_ABI_VERSION; }

QLORA_API size_t qlora_dtype_size(qlora_dtype dtype) {
    switch (qlora::raw_enum(dtype)) {
        case QLORA_DTYPE_F32: return 4;
        case QLORA_DTYPE_F16: return 2;
        case QLORA_DTYPE_BF16: return 2;
        case QLORA_DTYPE_U8: return 1;
        case QLORA_DTYPE_I32: return 4;
        case QLORA_DTYPE_I64: return 8;
        case QLORA_DTYPE_F64: return 8;
        case QLORA_DTYPE_I8: return 1;
        case QLORA_DTYPE_I16: return 2;
        case QLORA_DTYPE_U16: return 2;
        case QLORA_DTYPE_U32: return 4;
        case QLORA_DTYPE_U64: return 8;
        case QLORA_DTYPE_BOOL: return 1;
        case QLORA_DTYPE_F8_E4M3: return 1;
        case QLORA_DTYPE_F8_E5M2: return 1;
    }
    return 0;
}

} // extern "C"

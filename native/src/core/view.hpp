// Validation of qlora_view arguments.
#pragma once

#include "core/error.hpp"
#include "qlora.h"

#include <cstdint>
#include <initializer_list>

namespace qlora {

struct ViewInfo {
    void *      data;
    qlora_dtype dtype;
    int32_t     device;
    int64_t     rows, cols, stride;
    int64_t numel() const { return rows * cols; }
    bool contiguous() const { return stride == cols || rows <= 1; }
    template <typename T> T * as() const { return static_cast<T *>(data); }
};

const char * dtype_name(qlora_dtype dtype);
const char * dtype_name_raw(int32_t dtype); // "unknown" outside the enum

// Checks a view: non-NULL view and data, dtype among `allowed`, rows/cols >= 1,
// stride 0 or >= cols, and (unless allow_device) host memory. `name` is used
// in messages ("src", "dst", ...). Returns it with stride resolved.
ViewInfo check_view(const qlora_view * v, const char * name, std::initializer_list<qlora_dtype> allowed,
                    bool allow_device = false);

// Same, and requires contiguous memory.
ViewInfo check_contiguous(const qlora_view * v, const char * name, std::initializer_list<qlora_dtype> allowed,
                          bool allow_device = false);

} // namespace qlora

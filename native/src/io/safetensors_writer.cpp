// safetensors writer: byte-compatible with the reference implementation's
// serialize_to_file (header layout, padding, tensor order), written atomically.
#include "io/safetensors.hpp"

#include "core/error.hpp"
#include "io/json.hpp"

#include <algorithm>
#include <cstring>

namespace qlora::io {

qlora_safetensors_writer & checked(qlora_safetensors_writer_t w) {
    QLORA_CHECK_ARG(w != nullptr, "writer must not be NULL");
    return *w;
}

namespace {

void check_name(const char * what, const char * s) {
    QLORA_CHECK_ARG(s != nullptr, "%s must not be NULL", what);
    size_t bad = 0;
    QLORA_CHECK_ARG(json::valid_utf8(s, &bad), "%s %s is not valid UTF-8 (byte %zu)", what,
                    json::quote_for_message(s).c_str(), bad);
}

} // namespace

qlora_safetensors_writer::Entry make_entry(const char * name, const qlora_view * data, int32_t n_dims,
                                           const int64_t * shape, bool borrow) {
    check_name("name", name);
    QLORA_CHECK_ARG(name[0] != '\0', "name must not be empty");
    QLORA_CHECK_ARG(std::strcmp(name, "__metadata__") != 0, "\"__metadata__\" is reserved and cannot name a tensor");
    QLORA_CHECK_ARG(data != nullptr, "data must not be NULL (tensor '%s')", name);
    const int32_t dtype = raw_enum(data->dtype);
    QLORA_CHECK_ARG(dtype >= QLORA_DTYPE_F32 && dtype <= QLORA_DTYPE_F8_E5M2, "tensor '%s': data has unknown dtype %d",
                    name, dtype);
    QLORA_CHECK_ARG(data->data != nullptr, "tensor '%s': data.data must not be NULL", name);
    QLORA_CHECK_ARG(data->device == QLORA_DEVICE_HOST, "tensor '%s': data is on device %d; the writer needs host memory",
                    name, data->device);
    QLORA_CHECK_ARG(data->rows >= 1 && data->cols >= 1 && data->rows <= (INT64_C(1) << 50) / data->cols,
                    "tensor '%s': data has shape [%lld, %lld]; both must be >= 1", name,
                    static_cast<long long>(data->rows), static_cast<long long>(data->cols));
    QLORA_CHECK_ARG(data->stride == 0 || data->stride >= data->cols,
                    "tensor '%s': data has stride %lld smaller than its %lld columns", name,
                    static_cast<long long>(data->stride), static_cast<long long>(data->cols));
    QLORA_CHECK_ARG(n_dims >= 0 && n_dims <= QLORA_ST_MAX_DIMS, "tensor '%s': n_dims must be in [0, %d], got %d", name,
                    QLORA_ST_MAX_DIMS, n_dims);
    QLORA_CHECK_ARG(n_dims == 0 || shape != nullptr, "tensor '%s': shape must not be NULL when n_dims = %d", name, n_dims);

    qlora_safetensors_writer::Entry e;
    e.name = name;
    e.dtype = data->dtype;
    e.n_dims = n_dims;
    int64_t numel = 1;
    for (int32_t d = 0; d < n_dims; ++d) {
        QLORA_CHECK_ARG(shape[d] >= 1 && shape[d] <= (INT64_C(1) << 50) / numel,
                        "tensor '%s': shape[%d] = %lld is invalid (dimensions must be >= 1, and the total reasonable)",
                        name, d, static_cast<long long>(shape[d]));
        e.shape[d] = shape[d];
        numel *= shape[d];
    }
    const int64_t view_numel = data->rows * data->cols;
    QLORA_CHECK_ARG(numel == view_numel, "tensor '%s': shape %s has %lld elements but data is [%lld, %lld] = %lld",
                    name, shape_string(e.shape, n_dims).c_str(), static_cast<long long>(numel),
                    static_cast<long long>(data->rows), static_cast<long long>(data->cols),
                    static_cast<long long>(view_numel));
    const int64_t esize = static_cast<int64_t>(qlora_dtype_size(data->dtype));
    e.nbytes = numel * esize;
    e.rows = data->rows;
    e.row_bytes = data->cols * esize;
    e.stride_bytes = (data->stride == 0 ? data->cols : data->stride) * esize;
    e.data = static_cast<const uint8_t *>(data->data);
    if (!borrow) {
        e.owned.resize(static_cast<size_t>(e.nbytes));
        for (int64_t r = 0; r < e.rows; ++r)
            std::memcpy(e.owned.data() + r * e.row_bytes, e.data + r * e.stride_bytes, static_cast<size_t>(e.row_bytes));
        e.data = e.owned.data();
        e.stride_bytes = e.row_bytes;
    }
    return e;
}

} // namespace qlora::io

void qlora_safetensors_writer::add(Entry e) {
    QLORA_CHECK_ARG(by_name.find(e.name) == by_name.end(), "a tensor named '%s' was already added", e.name.c_str());
    by_name.emplace(e.name, entries.size());
    entries.push_back(std::move(e));
}

void qlora_safetensors_writer::set_metadata(std::string key, std::string value) {
    for (const auto & kv : metadata)
        QLORA_CHECK_ARG(kv.first != key, "metadata key '%s' was already set", key.c_str());
    metadata.emplace_back(std::move(key), std::move(value));
}

void qlora_safetensors_writer::write(const std::string & path) const {
    using qlora::json::Value;
    // The reference sorts by dtype (its enum order, widest last) descending,
    // then by name, so every tensor starts aligned to its element size.
    std::vector<const Entry *> order;
    order.reserve(entries.size());
    for (const auto & e : entries) order.push_back(&e);
    std::sort(order.begin(), order.end(), [](const Entry * a, const Entry * b) {
        const int ra = qlora::io::st_dtype_rank(a->dtype), rb = qlora::io::st_dtype_rank(b->dtype);
        return ra != rb ? ra > rb : a->name < b->name;
    });

    Value root = Value::object();
    if (!metadata.empty()) {
        auto sorted = metadata;
        std::sort(sorted.begin(), sorted.end());
        Value & m = root.add("__metadata__", Value::object());
        for (const auto & [k, v] : sorted) m.add(k, Value::of_string(v));
    }
    int64_t offset = 0;
    for (const Entry * e : order) {
        Value & t = root.add(e->name, Value::object());
        t.add("dtype", Value::of_string(qlora::io::st_dtype_name(e->dtype)));
        Value & shape = t.add("shape", Value::array());
        for (int32_t d = 0; d < e->n_dims; ++d) shape.push(Value::of_int(e->shape[d]));
        Value & off = t.add("data_offsets", Value::array());
        off.push(Value::of_int(offset));
        off.push(Value::of_int(offset + e->nbytes));
        offset += e->nbytes;
    }
    std::string header = qlora::json::to_string(root, qlora::json::kCompact);
    header.append((8 - header.size() % 8) % 8, ' ');
    uint8_t len[8];
    uint64_t n = header.size();
    for (int k = 0; k < 8; ++k) len[k] = static_cast<uint8_t>(n >> (8 * k));

    qlora::io::AtomicFile out(path);
    out.write(len, 8);
    out.write(header.data(), header.size());
    for (const Entry * e : order) {
        const uint8_t * src = e->owned.empty() ? e->data : e->owned.data();
        if (e->stride_bytes == e->row_bytes) {
            out.write(src, static_cast<size_t>(e->nbytes));
        } else {
            for (int64_t r = 0; r < e->rows; ++r)
                out.write(src + r * e->stride_bytes, static_cast<size_t>(e->row_bytes));
        }
    }
    out.commit();
}

using namespace qlora;
using namespace qlora::io;

extern "C" {

QLORA_API qlora_status qlora_safetensors_writer_create(qlora_safetensors_writer_t * out) {
    return QLORA_GUARD({
        QLORA_CHECK_NOT_NULL(out);
        *out = new qlora_safetensors_writer();
    });
}

QLORA_API void qlora_safetensors_writer_free(qlora_safetensors_writer_t writer) { delete writer; }

QLORA_API qlora_status qlora_safetensors_writer_add(qlora_safetensors_writer_t writer, const char * name,
                                                    const qlora_view * data, int32_t n_dims, const int64_t * shape,
                                                    int32_t borrow) {
    return QLORA_GUARD({
        auto & w = checked(writer);
        w.add(make_entry(name, data, n_dims, shape, borrow != 0));
    });
}

QLORA_API qlora_status qlora_safetensors_writer_set_metadata(qlora_safetensors_writer_t writer, const char * key,
                                                             const char * value) {
    return QLORA_GUARD({
        auto & w = checked(writer);
        check_name("key", key);
        check_name("value", value);
        w.set_metadata(key, value);
    });
}

QLORA_API qlora_status qlora_safetensors_writer_write(qlora_safetensors_writer_t writer, const char * path) {
    return QLORA_GUARD({
        const auto & w = checked(writer);
        QLORA_CHECK_NOT_NULL(path);
        w.write(path);
    });
}

} // extern "C"

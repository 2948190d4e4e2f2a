// safetensors reader: header parsing and validation, single files and
// sharded checkpoints (model.safetensors.index.json).
#include "io/safetensors.hpp"

#include "core/error.hpp"
#include "io/json.hpp"

#include <algorithm>
#include <cstring>
#include <map>

namespace qlora::io {

namespace {

struct DtypeName {
    const char * name;
    qlora_dtype  dtype;
    int          rank; // position in the reference implementation's Dtype enum
};
// The reference's enum order: BOOL, (F4, F6_E2M3, F6_E3M2), U8, I8, F8_E5M2,
// F8_E4M3, (F8_E8M0), I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64.
constexpr DtypeName kDtypes[] = {
    {"BOOL", QLORA_DTYPE_BOOL, 0},     {"U8", QLORA_DTYPE_U8, 4},        {"I8", QLORA_DTYPE_I8, 5},
    {"F8_E5M2", QLORA_DTYPE_F8_E5M2, 6}, {"F8_E4M3", QLORA_DTYPE_F8_E4M3, 7}, {"I16", QLORA_DTYPE_I16, 9},
    {"U16", QLORA_DTYPE_U16, 10},      {"F16", QLORA_DTYPE_F16, 11},     {"BF16", QLORA_DTYPE_BF16, 12},
    {"I32", QLORA_DTYPE_I32, 13},      {"U32", QLORA_DTYPE_U32, 14},     {"F32", QLORA_DTYPE_F32, 15},
    {"F64", QLORA_DTYPE_F64, 16},      {"I64", QLORA_DTYPE_I64, 17},     {"U64", QLORA_DTYPE_U64, 18},
};

// Reads a little-endian u64 without alignment assumptions.
uint64_t load_le64(const uint8_t * p) {
    uint64_t v = 0;
    for (int k = 7; k >= 0; --k) v = (v << 8) | p[k];
    return v;
}

std::string q(std::string_view s) { return json::quote_for_message(s); }

std::string pos_of(const json::Value & v) { return format("line %u, column %u", v.line, v.column); }

// A non-negative JSON integer, or -1 if `v` is not one.
int64_t nonneg_int(const json::Value & v) {
    if (!v.is_number() || !v.integral || v.integer < 0) return -1;
    return v.integer;
}

std::string describe(const json::Value & v) {
    if (v.is_number()) {
        if (v.integral) return std::to_string(v.integer);
        return json::python_float_repr(v.number);
    }
    if (v.is_string()) return "the string " + q(v.text);
    return std::string("a") + (v.is_array() || v.is_object() ? "n " : " ") + json::kind_name(v.kind);
}

StTensor parse_entry(const std::string & file, const std::string & name, const json::Value & e) {
    const std::string where = format("%s: tensor %s", file.c_str(), q(name).c_str());
    if (name.find('\0') != std::string::npos)
        fail(QLORA_ERROR_FORMAT, "%s: the name contains a NUL character", where.c_str());
    if (!e.is_object())
        fail(QLORA_ERROR_FORMAT, "%s: entry must be a JSON object with dtype, shape and data_offsets, got %s",
             where.c_str(), describe(e).c_str());
    StTensor t;
    t.name = name;

    const json::Value * dt = e.find("dtype");
    if (!dt) fail(QLORA_ERROR_FORMAT, "%s: missing \"dtype\"", where.c_str());
    if (!dt->is_string()) fail(QLORA_ERROR_FORMAT, "%s: \"dtype\" must be a string, got %s", where.c_str(), describe(*dt).c_str());
    if (!st_dtype_from_name(dt->text, &t.dtype))
        fail(QLORA_ERROR_FORMAT,
             "%s: unknown dtype %s (supported: BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, "
             "F32, F64, I64, U64)",
             where.c_str(), q(dt->text).c_str());

    const json::Value * sh = e.find("shape");
    if (!sh) fail(QLORA_ERROR_FORMAT, "%s: missing \"shape\"", where.c_str());
    if (!sh->is_array()) fail(QLORA_ERROR_FORMAT, "%s: \"shape\" must be an array, got %s", where.c_str(), describe(*sh).c_str());
    if (sh->items.size() > QLORA_ST_MAX_DIMS)
        fail(QLORA_ERROR_FORMAT, "%s: shape has %zu dimensions; at most %d are supported", where.c_str(),
             sh->items.size(), QLORA_ST_MAX_DIMS);
    t.n_dims = static_cast<int32_t>(sh->items.size());
    bool overflow = false;
    t.numel = 1;
    for (int32_t d = 0; d < t.n_dims; ++d) {
        const int64_t v = nonneg_int(sh->items[static_cast<size_t>(d)]);
        if (v < 0)
            fail(QLORA_ERROR_FORMAT, "%s: shape[%d] is %s; dimensions must be non-negative integers", where.c_str(), d,
                 describe(sh->items[static_cast<size_t>(d)]).c_str());
        t.shape[d] = v;
    }
    for (int32_t d = 0; d < t.n_dims; ++d) {
        if (t.shape[d] == 0) { t.numel = 0; overflow = false; break; }
        if (t.numel > (INT64_C(1) << 62) / t.shape[d]) overflow = true;
        else t.numel *= t.shape[d];
    }
    const int64_t esize = static_cast<int64_t>(qlora_dtype_size(t.dtype));
    if (overflow || t.numel > (INT64_C(1) << 62) / esize)
        fail(QLORA_ERROR_FORMAT, "%s: shape %s has too many elements", where.c_str(), shape_string(t.shape, t.n_dims).c_str());
    t.nbytes = t.numel * esize;

    const json::Value * off = e.find("data_offsets");
    if (!off) fail(QLORA_ERROR_FORMAT, "%s: missing \"data_offsets\"", where.c_str());
    if (!off->is_array() || off->items.size() != 2 || nonneg_int(off->items[0]) < 0 || nonneg_int(off->items[1]) < 0)
        fail(QLORA_ERROR_FORMAT, "%s: \"data_offsets\" must be [begin, end] with two non-negative integers (%s)",
             where.c_str(), pos_of(*off).c_str());
    t.begin = static_cast<uint64_t>(off->items[0].integer);
    t.end = static_cast<uint64_t>(off->items[1].integer);
    if (t.begin > t.end)
        fail(QLORA_ERROR_FORMAT, "%s: data_offsets [%llu, %llu] end before they begin", where.c_str(),
             static_cast<unsigned long long>(t.begin), static_cast<unsigned long long>(t.end));
    if (t.end - t.begin != static_cast<uint64_t>(t.nbytes))
        fail(QLORA_ERROR_FORMAT, "%s: dtype %s with shape %s needs %lld bytes, but data_offsets [%llu, %llu] hold %llu",
             where.c_str(), st_dtype_name(t.dtype), shape_string(t.shape, t.n_dims).c_str(),
             static_cast<long long>(t.nbytes), static_cast<unsigned long long>(t.begin),
             static_cast<unsigned long long>(t.end), static_cast<unsigned long long>(t.end - t.begin));
    return t;
}

StringPairs parse_metadata(const std::string & file, const json::Value & m) {
    if (!m.is_object())
        fail(QLORA_ERROR_FORMAT, "%s: __metadata__ must be an object of strings, got %s", file.c_str(), describe(m).c_str());
    StringPairs out;
    for (const auto & [k, v] : m.members) {
        if (!v.is_string())
            fail(QLORA_ERROR_FORMAT, "%s: __metadata__ %s must be a string, got %s", file.c_str(), q(k).c_str(),
                 describe(v).c_str());
        if (k.find('\0') != std::string::npos || v.text.find('\0') != std::string::npos)
            fail(QLORA_ERROR_FORMAT, "%s: __metadata__ %s contains a NUL character", file.c_str(), q(k).c_str());
        out.emplace_back(k, v.text);
    }
    std::sort(out.begin(), out.end());
    return out;
}

} // namespace

bool st_dtype_from_name(std::string_view name, qlora_dtype * out) {
    for (const auto & d : kDtypes)
        if (name == d.name) { *out = d.dtype; return true; }
    return false;
}

const char * st_dtype_name(qlora_dtype dtype) {
    for (const auto & d : kDtypes)
        if (dtype == d.dtype) return d.name;
    return nullptr;
}

int st_dtype_rank(qlora_dtype dtype) {
    for (const auto & d : kDtypes)
        if (dtype == d.dtype) return d.rank;
    return -1;
}

std::string shape_string(const int64_t * shape, int32_t n_dims) {
    std::string s = "[";
    for (int32_t d = 0; d < n_dims; ++d) {
        if (d) s += ", ";
        s += std::to_string(shape[d]);
    }
    return s + "]";
}

StHeader parse_safetensors(const uint8_t * data, uint64_t size, const std::string & file, uint64_t max_header_bytes) {
    if (size < 8)
        fail(QLORA_ERROR_FORMAT, "%s: the file is %llu bytes; a safetensors file starts with an 8-byte header length",
             file.c_str(), static_cast<unsigned long long>(size));
    const uint64_t n = load_le64(data);
    if (n > size - 8)
        fail(QLORA_ERROR_FORMAT, "%s: header length %llu goes beyond the end of the file (%llu bytes)", file.c_str(),
             static_cast<unsigned long long>(n), static_cast<unsigned long long>(size));
    if (n > max_header_bytes)
        fail(QLORA_ERROR_FORMAT, "%s: header length %llu exceeds the limit of %llu bytes", file.c_str(),
             static_cast<unsigned long long>(n), static_cast<unsigned long long>(max_header_bytes));
    json::Limits limits;
    limits.max_bytes = static_cast<size_t>(n);
    limits.max_depth = 8; // the schema needs 3
    json::Value root;
    try {
        root = json::parse(std::string_view(reinterpret_cast<const char *>(data + 8), static_cast<size_t>(n)), limits);
    } catch (const Error & e) {
        fail(QLORA_ERROR_FORMAT, "%s: the header is not valid JSON: %s", file.c_str(), e.what());
    }
    if (!root.is_object())
        fail(QLORA_ERROR_FORMAT, "%s: the header must be a JSON object, got %s", file.c_str(), describe(root).c_str());

    StHeader h;
    h.data_start = 8 + n;
    const uint64_t data_size = size - h.data_start;
    for (const auto & [name, value] : root.members) {
        if (name == "__metadata__") {
            h.metadata = parse_metadata(file, value);
            continue;
        }
        StTensor t = parse_entry(file, name, value);
        if (t.end > data_size)
            fail(QLORA_ERROR_FORMAT,
                 "%s: tensor %s: data_offsets [%llu, %llu] go beyond the end of the data section (%llu bytes)",
                 file.c_str(), q(name).c_str(), static_cast<unsigned long long>(t.begin),
                 static_cast<unsigned long long>(t.end), static_cast<unsigned long long>(data_size));
        h.tensors.push_back(std::move(t));
    }
    std::sort(h.tensors.begin(), h.tensors.end(), [](const StTensor & a, const StTensor & b) {
        return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    // Like the reference implementation: the tensors tile the data section
    // exactly, with no overlap, no gap and nothing after the last one.
    uint64_t covered = 0;
    for (size_t k = 0; k < h.tensors.size(); ++k) {
        const StTensor & t = h.tensors[k];
        if (t.begin < covered) {
            const StTensor & p = h.tensors[k - 1];
            fail(QLORA_ERROR_FORMAT, "%s: tensors %s [%llu, %llu] and %s [%llu, %llu] overlap", file.c_str(),
                 q(p.name).c_str(), static_cast<unsigned long long>(p.begin), static_cast<unsigned long long>(p.end),
                 q(t.name).c_str(), static_cast<unsigned long long>(t.begin), static_cast<unsigned long long>(t.end));
        }
        if (t.begin > covered)
            fail(QLORA_ERROR_FORMAT, "%s: bytes [%llu, %llu) of the data section belong to no tensor (before %s)",
                 file.c_str(), static_cast<unsigned long long>(covered), static_cast<unsigned long long>(t.begin),
                 q(t.name).c_str());
        covered = t.end;
    }
    if (covered != data_size)
        fail(QLORA_ERROR_FORMAT, "%s: the data section is %llu bytes but the tensors cover only %llu", file.c_str(),
             static_cast<unsigned long long>(data_size), static_cast<unsigned long long>(covered));
    return h;
}

qlora_safetensors & checked(qlora_safetensors_t f) {
    QLORA_CHECK_ARG(f != nullptr, "file must not be NULL");
    return *f;
}

namespace {

void check_params(const qlora_safetensors_params * params) {
    QLORA_CHECK_NOT_NULL(params);
    const qlora_safetensors_params * p = params;
    const int32_t access = raw_enum(p->access);
    QLORA_CHECK_ARG(access == QLORA_ACCESS_NORMAL || access == QLORA_ACCESS_SEQUENTIAL || access == QLORA_ACCESS_RANDOM,
                    "params->access must be QLORA_ACCESS_NORMAL, _SEQUENTIAL or _RANDOM, got %d", access);
    QLORA_CHECK_ARG(p->max_header_bytes >= 2, "params->max_header_bytes must be >= 2, got %lld",
                    static_cast<long long>(p->max_header_bytes));
}

// Maps and validates one file; appends it as a shard of `f`.
StHeader open_shard(qlora_safetensors & f, const std::string & path, const qlora_safetensors_params & p) {
    MappedFile file(path);
    StHeader h = parse_safetensors(file.data(), file.size(), path, static_cast<uint64_t>(p.max_header_bytes));
    file.advise_all(p.access);
    qlora_safetensors::Shard s;
    s.path = path;
    s.file = std::move(file);
    s.data_start = h.data_start;
    f.shards.push_back(std::move(s));
    for (auto & t : h.tensors) t.shard = static_cast<int32_t>(f.shards.size() - 1);
    return h;
}

void add_tensors(qlora_safetensors & f, std::vector<StTensor> && tensors) {
    for (auto & t : tensors) {
        const int64_t idx = static_cast<int64_t>(f.tensors.size());
        if (!f.by_name.emplace(t.name, idx).second) {
            const StTensor & other = f.tensors[static_cast<size_t>(f.by_name[t.name])];
            fail(QLORA_ERROR_FORMAT, "tensor %s is in both %s and %s", q(t.name).c_str(), f.path_of(other).c_str(),
                 f.shards[static_cast<size_t>(t.shard)].path.c_str());
        }
        f.tensors.push_back(std::move(t));
    }
}

// A shard name from weight_map must be a plain file name in the index's
// directory: no separators, no "." or "..", no NUL.
void check_shard_name(const std::string & index, const std::string & tensor, const std::string & shard) {
    if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos ||
        shard.find('\\') != std::string::npos || shard.find('\0') != std::string::npos)
        fail(QLORA_ERROR_FORMAT, "%s: weight_map[%s] = %s is not a plain file name in the index's directory",
             index.c_str(), q(tensor).c_str(), q(shard).c_str());
}

} // namespace

} // namespace qlora::io

using namespace qlora;
using namespace qlora::io;

extern "C" {

QLORA_API qlora_safetensors_params qlora_safetensors_default_params(void) {
    qlora_safetensors_params p{};
    p.access = QLORA_ACCESS_NORMAL;
    p.max_header_bytes = 100'000'000;
    return p;
}

QLORA_API qlora_status qlora_safetensors_open(const char * path, const qlora_safetensors_params * params,
                                              qlora_safetensors_t * out) {
    return QLORA_GUARD({
        QLORA_CHECK_NOT_NULL(path);
        check_params(params);
        QLORA_CHECK_NOT_NULL(out);
        auto f = std::make_unique<qlora_safetensors>();
        f->display = path;
        StHeader h = open_shard(*f, path, *params);
        f->metadata = std::move(h.metadata);
        add_tensors(*f, std::move(h.tensors));
        *out = f.release();
    });
}

QLORA_API qlora_status qlora_safetensors_open_index(const char * index_path, const qlora_safetensors_params * params,
                                                    qlora_safetensors_t * out) {
    return QLORA_GUARD({
        QLORA_CHECK_NOT_NULL(index_path);
        check_params(params);
        QLORA_CHECK_NOT_NULL(out);
        const std::string index = index_path;
        const std::string text = read_small_file(index, static_cast<uint64_t>(params->max_header_bytes), "the index");
        json::Limits limits;
        limits.max_depth = 16;
        json::Value root;
        try {
            root = json::parse(text, limits);
        } catch (const Error & e) {
            fail(QLORA_ERROR_FORMAT, "%s: not valid JSON: %s", index.c_str(), e.what());
        }
        if (!root.is_object())
            fail(QLORA_ERROR_FORMAT, "%s: must be a JSON object, got %s", index.c_str(), describe(root).c_str());
        const json::Value * meta = root.find("metadata");
        if (meta && !meta->is_object())
            fail(QLORA_ERROR_FORMAT, "%s: \"metadata\" must be an object, got %s", index.c_str(), describe(*meta).c_str());
        const json::Value * wm = root.find("weight_map");
        if (!wm) fail(QLORA_ERROR_FORMAT, "%s: missing \"weight_map\"", index.c_str());
        if (!wm->is_object())
            fail(QLORA_ERROR_FORMAT, "%s: \"weight_map\" must be an object, got %s", index.c_str(), describe(*wm).c_str());
        if (wm->members.empty()) fail(QLORA_ERROR_FORMAT, "%s: \"weight_map\" is empty", index.c_str());

        std::map<std::string, std::string> shard_of; // tensor -> shard file name
        std::vector<std::string> shard_names;        // sorted, unique
        for (const auto & [tensor, shard] : wm->members) {
            if (!shard.is_string())
                fail(QLORA_ERROR_FORMAT, "%s: weight_map[%s] must be a file name string, got %s", index.c_str(),
                     q(tensor).c_str(), describe(shard).c_str());
            check_shard_name(index, tensor, shard.text);
            shard_of[tensor] = shard.text;
            shard_names.push_back(shard.text);
        }
        std::sort(shard_names.begin(), shard_names.end());
        shard_names.erase(std::unique(shard_names.begin(), shard_names.end()), shard_names.end());

        auto f = std::make_unique<qlora_safetensors>();
        f->display = index;
        const std::string dir = dir_name(index);
        std::map<std::string, std::string> metadata;
        std::map<std::string, std::string> metadata_from;
        for (const auto & name : shard_names) {
            const std::string path = dir + "/" + name;
            StHeader h = open_shard(*f, path, *params);
            for (const auto & t : h.tensors) {
                auto it = shard_of.find(t.name);
                if (it == shard_of.end())
                    fail(QLORA_ERROR_FORMAT, "%s: tensor %s is not listed in the weight_map of %s", path.c_str(),
                         q(t.name).c_str(), index.c_str());
                if (it->second != name)
                    fail(QLORA_ERROR_FORMAT, "%s: tensor %s is in %s, but the weight_map says %s", index.c_str(),
                         q(t.name).c_str(), name.c_str(), it->second.c_str());
            }
            for (const auto & [k, v] : h.metadata) {
                auto [it, inserted] = metadata.emplace(k, v);
                if (!inserted && it->second != v)
                    fail(QLORA_ERROR_FORMAT, "%s: __metadata__ %s is %s, but %s has %s", path.c_str(), q(k).c_str(),
                         q(v).c_str(), metadata_from[k].c_str(), q(it->second).c_str());
                if (inserted) metadata_from[k] = path;
            }
            add_tensors(*f, std::move(h.tensors));
        }
        for (const auto & [tensor, shard] : shard_of)
            if (!f->find(tensor))
                fail(QLORA_ERROR_FORMAT, "%s: weight_map lists tensor %s in %s, but that file has no such tensor",
                     index.c_str(), q(tensor).c_str(), shard.c_str());
        f->metadata.assign(metadata.begin(), metadata.end());
        *out = f.release();
    });
}

QLORA_API void qlora_safetensors_free(qlora_safetensors_t file) { delete file; }

QLORA_API qlora_status qlora_safetensors_count(qlora_safetensors_t file, int64_t * out) {
    return QLORA_GUARD({
        const auto & f = checked(file);
        QLORA_CHECK_NOT_NULL(out);
        *out = static_cast<int64_t>(f.tensors.size());
    });
}

namespace {
const StTensor & tensor_at(const qlora_safetensors & f, int64_t index) {
    QLORA_CHECK_ARG(index >= 0 && index < static_cast<int64_t>(f.tensors.size()),
                    "index %lld is out of range: %s has %zu tensors", static_cast<long long>(index), f.display.c_str(),
                    f.tensors.size());
    return f.tensors[static_cast<size_t>(index)];
}
} // namespace

QLORA_API qlora_status qlora_safetensors_info(qlora_safetensors_t file, int64_t index, qlora_safetensors_tensor * out) {
    return QLORA_GUARD({
        const auto & f = checked(file);
        const StTensor & t = tensor_at(f, index);
        QLORA_CHECK_NOT_NULL(out);
        qlora_safetensors_tensor i{};
        i.name = t.name.c_str();
        i.path = f.path_of(t).c_str();
        i.dtype = t.dtype;
        i.n_dims = t.n_dims;
        for (int d = 0; d < t.n_dims; ++d) i.shape[d] = t.shape[d];
        i.numel = t.numel;
        i.nbytes = t.nbytes;
        i.file_offset = static_cast<int64_t>(f.shards[static_cast<size_t>(t.shard)].data_start + t.begin);
        *out = i;
    });
}

QLORA_API qlora_status qlora_safetensors_find(qlora_safetensors_t file, const char * name, int64_t * out_index) {
    return QLORA_GUARD({
        const auto & f = checked(file);
        QLORA_CHECK_NOT_NULL(name);
        QLORA_CHECK_NOT_NULL(out_index);
        auto it = f.by_name.find(name);
        *out_index = it == f.by_name.end() ? -1 : it->second;
    });
}

QLORA_API qlora_status qlora_safetensors_data(qlora_safetensors_t file, int64_t index, qlora_view * out) {
    return QLORA_GUARD({
        const auto & f = checked(file);
        const StTensor & t = tensor_at(f, index);
        QLORA_CHECK_NOT_NULL(out);
        qlora_view v{};
        v.data = const_cast<uint8_t *>(f.tensor_data(t));
        v.dtype = t.dtype;
        v.device = QLORA_DEVICE_HOST;
        v.cols = t.n_dims == 0 ? 1 : t.shape[t.n_dims - 1];
        v.rows = 1;
        for (int d = 0; d + 1 < t.n_dims; ++d) v.rows *= t.shape[d];
        v.stride = 0;
        *out = v;
    });
}

QLORA_API qlora_status qlora_safetensors_prefetch(qlora_safetensors_t file, int64_t index) {
    return QLORA_GUARD({
        const auto & f = checked(file);
        const StTensor & t = tensor_at(f, index);
        const auto & s = f.shards[static_cast<size_t>(t.shard)];
        s.file.prefetch(s.data_start + t.begin, static_cast<uint64_t>(t.nbytes));
    });
}

QLORA_API qlora_status qlora_safetensors_release(qlora_safetensors_t file, int64_t index) {
    return QLORA_GUARD({
        const auto & f = checked(file);
        const StTensor & t = tensor_at(f, index);
        const auto & s = f.shards[static_cast<size_t>(t.shard)];
        s.file.release(s.data_start + t.begin, static_cast<uint64_t>(t.nbytes));
    });
}

QLORA_API qlora_status qlora_safetensors_metadata_count(qlora_safetensors_t file, int64_t * out) {
    return QLORA_GUARD({
        const auto & f = checked(file);
        QLORA_CHECK_NOT_NULL(out);
        *out = static_cast<int64_t>(f.metadata.size());
    });
}

QLORA_API qlora_status qlora_safetensors_metadata_at(qlora_safetensors_t file, int64_t index, const char ** out_key,
                                                     const char ** out_value) {
    return QLORA_GUARD({
        const auto & f = checked(file);
        QLORA_CHECK_ARG(index >= 0 && index < static_cast<int64_t>(f.metadata.size()),
                        "index %lld is out of range: %s has %zu metadata entries", static_cast<long long>(index),
                        f.display.c_str(), f.metadata.size());
        QLORA_CHECK_NOT_NULL(out_key);
        QLORA_CHECK_NOT_NULL(out_value);
        *out_key = f.metadata[static_cast<size_t>(index)].first.c_str();
        *out_value = f.metadata[static_cast<size_t>(index)].second.c_str();
    });
}

QLORA_API qlora_status qlora_safetensors_metadata_get(qlora_safetensors_t file, const char * key,
                                                      const char ** out_value) {
    return QLORA_GUARD({
        const auto & f = checked(file);
        QLORA_CHECK_NOT_NULL(key);
        QLORA_CHECK_NOT_NULL(out_value);
        const char * found = nullptr;
        for (const auto & [k, v] : f.metadata)
            if (k == key) found = v.c_str();
        *out_value = found;
    });
}

} // extern "C"

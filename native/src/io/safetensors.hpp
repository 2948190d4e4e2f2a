// safetensors: header parsing/validation (from memory, so it can be fuzzed
// without files), the objects behind qlora_safetensors_t and
// qlora_safetensors_writer_t, and the header writer.
#pragma once

#include "io/file.hpp"
#include "qlora.h"

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace qlora::io {

// safetensors dtype names <-> qlora_dtype. Returns false for an unknown name.
bool st_dtype_from_name(std::string_view name, qlora_dtype * out);
const char * st_dtype_name(qlora_dtype dtype); // nullptr for a value outside the enum
// The reference implementation's dtype order (its Rust enum), used to sort
// tensors when writing: widest first.
int st_dtype_rank(qlora_dtype dtype);

struct StTensor {
    std::string name;
    qlora_dtype dtype = QLORA_DTYPE_F32;
    int32_t     n_dims = 0;
    int64_t     shape[QLORA_ST_MAX_DIMS] = {};
    int64_t     numel = 1;
    int64_t     nbytes = 0;
    uint64_t    begin = 0, end = 0; // data_offsets, relative to the data section
    int32_t     shard = 0;
};

using StringPairs = std::vector<std::pair<std::string, std::string>>;

struct StHeader {
    uint64_t              data_start = 0; // 8 + header length
    std::vector<StTensor> tensors;        // sorted by data offset
    StringPairs           metadata;       // __metadata__, sorted by key
};

// Parses and validates a whole safetensors file held in memory. `display` is
// the file name used in messages. Throws Error(FORMAT) naming the problem.
StHeader parse_safetensors(const uint8_t * data, uint64_t size, const std::string & display,
                           uint64_t max_header_bytes = 100'000'000);

// "[2, 3]" for messages.
std::string shape_string(const int64_t * shape, int32_t n_dims);

} // namespace qlora::io

struct qlora_safetensors {
    struct Shard {
        std::string          path;
        qlora::io::MappedFile file;
        uint64_t             data_start = 0;
    };
    std::vector<Shard>                        shards;
    std::vector<qlora::io::StTensor>          tensors;
    std::unordered_map<std::string, int64_t>  by_name;
    qlora::io::StringPairs                    metadata;
    std::string                               display; // the file or index path

    const uint8_t * tensor_data(const qlora::io::StTensor & t) const {
        const Shard & s = shards[static_cast<size_t>(t.shard)];
        return s.file.data() + s.data_start + t.begin;
    }
    const qlora::io::StTensor * find(std::string_view name) const {
        auto it = by_name.find(std::string(name));
        return it == by_name.end() ? nullptr : &tensors[static_cast<size_t>(it->second)];
    }
    const std::string & path_of(const qlora::io::StTensor & t) const { return shards[static_cast<size_t>(t.shard)].path; }
};

struct qlora_safetensors_writer {
    struct Entry {
        std::string          name;
        qlora_dtype          dtype = QLORA_DTYPE_U8;
        int32_t              n_dims = 0;
        int64_t              shape[QLORA_ST_MAX_DIMS] = {};
        int64_t              nbytes = 0;
        std::vector<uint8_t> owned;       // copied bytes (borrow = 0)
        const uint8_t *      data = nullptr; // first row
        int64_t              rows = 0, row_bytes = 0, stride_bytes = 0;
    };
    std::vector<Entry>                       entries;
    std::unordered_map<std::string, size_t>  by_name;
    qlora::io::StringPairs                   metadata;

    // Adds a tensor (validated by the caller except for the name).
    void add(Entry e);
    void set_metadata(std::string key, std::string value);
    void write(const std::string & path) const;
};

namespace qlora::io {
qlora_safetensors & checked(qlora_safetensors_t f);
qlora_safetensors_writer & checked(qlora_safetensors_writer_t w);
// Builds a writer entry from a view: checks dtype, shape vs element count,
// and copies (borrow = false) or references the bytes.
qlora_safetensors_writer::Entry make_entry(const char * name, const qlora_view * data, int32_t n_dims,
                                           const int64_t * shape, bool borrow);
} // namespace qlora::io

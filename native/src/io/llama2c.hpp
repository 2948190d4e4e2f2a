// llama2.c checkpoints: model.bin (legacy version-0 export) and
// tokenizer.bin, parsed from memory so the parsers can be fuzzed without files.
#pragma once

#include "io/file.hpp"
#include "qlora.h"

#include <cstdint>
#include <string>
#include <vector>

namespace qlora::io {

// Where each array of model.bin starts (in floats after the 28-byte header),
// and its per-layer slice shape.
struct Llama2cLayout {
    qlora_llama2c_config config{};
    int64_t kv_dim = 0, head_size = 0;
    int64_t offset[12] = {};   // float offset of each qlora_llama2c_weight
    int64_t rows[12] = {};     // per-layer (or whole, for non-layer arrays) rows
    int64_t cols[12] = {};
    bool    per_layer[12] = {};
    int64_t expected_bytes = 0;
};

// Validates the header and the file length exactly. `display` names the file.
Llama2cLayout parse_llama2c_model(const uint8_t * data, uint64_t size, const std::string & display);

struct Llama2cTokenizer {
    int32_t              max_token_length = 0;
    std::vector<float>   scores;
    std::vector<int64_t> offsets; // into `bytes`; token i is [offsets[i], offsets[i+1] - 1), NUL-terminated
    std::string          bytes;
    int32_t vocab_size() const { return static_cast<int32_t>(scores.size()); }
};

// vocab_size > 0: exactly that many tokens and nothing after; 0: to the end.
Llama2cTokenizer parse_llama2c_tokenizer(const uint8_t * data, uint64_t size, int32_t vocab_size,
                                         const std::string & display);

} // namespace qlora::io

struct qlora_llama2c_model {
    qlora::io::MappedFile    file;
    qlora::io::Llama2cLayout layout;
};

struct qlora_llama2c_tokenizer {
    qlora::io::Llama2cTokenizer tok;
};

// llama2.c model.bin / tokenizer.bin readers (FORMATS.md, "llama2.c checkpoint").
#include "io/llama2c.hpp"

#include "core/error.hpp"

#include <cmath>
#include <cstring>
#include <memory>

namespace qlora::io {

namespace {

int32_t load_i32(const uint8_t * p) {
    int32_t v;
    std::memcpy(&v, p, 4); // the files are little-endian, as is every target we build for
    return v;
}
float load_f32(const uint8_t * p) {
    float v;
    std::memcpy(&v, p, 4);
    return v;
}

constexpr uint32_t kMagicV1 = 0x616b3432; // "ak42", llama2.c export versions >= 1

const char * const kWeightNames[12] = {"token_embedding", "rms_att", "wq", "wk", "wv", "wo",
                                       "rms_ffn", "w1", "w2", "w3", "rms_final", "wcls"};

} // namespace

Llama2cLayout parse_llama2c_model(const uint8_t * data, uint64_t size, const std::string & file) {
    if (size < 28)
        fail(QLORA_ERROR_FORMAT, "%s: the file is %llu bytes; a llama2.c model starts with a 28-byte header (7 x int32)",
             file.c_str(), static_cast<unsigned long long>(size));
    uint32_t magic;
    std::memcpy(&magic, data, 4);
    if (magic == kMagicV1)
        fail(QLORA_ERROR_UNSUPPORTED,
             "%s: this is a llama2.c version-%d export (magic \"ak42\"); only the legacy version-0 format is "
             "supported (llama2.c export.py --version 0)",
             file.c_str(), load_i32(data + 4));
    Llama2cLayout L;
    auto & c = L.config;
    c.dim = load_i32(data);
    c.hidden_dim = load_i32(data + 4);
    c.n_layers = load_i32(data + 8);
    c.n_heads = load_i32(data + 12);
    c.n_kv_heads = load_i32(data + 16);
    const int32_t vocab_raw = load_i32(data + 20);
    c.seq_len = load_i32(data + 24);
    const struct { const char * name; int32_t v; } fields[] = {{"dim", c.dim},         {"hidden_dim", c.hidden_dim},
                                                               {"n_layers", c.n_layers}, {"n_heads", c.n_heads},
                                                               {"n_kv_heads", c.n_kv_heads}, {"seq_len", c.seq_len}};
    for (const auto & f : fields)
        if (f.v <= 0)
            fail(QLORA_ERROR_FORMAT, "%s: header field %s = %d must be positive", file.c_str(), f.name, f.v);
    if (vocab_raw == 0 || vocab_raw == INT32_MIN)
        fail(QLORA_ERROR_FORMAT, "%s: header field vocab_size = %d is invalid", file.c_str(), vocab_raw);
    c.shared_classifier = vocab_raw > 0 ? 1 : 0;
    c.vocab_size = vocab_raw > 0 ? vocab_raw : -vocab_raw;
    if (c.n_kv_heads > c.n_heads || c.n_heads % c.n_kv_heads != 0)
        fail(QLORA_ERROR_FORMAT, "%s: header field n_kv_heads = %d must divide n_heads = %d", file.c_str(), c.n_kv_heads,
             c.n_heads);
    if (c.dim % c.n_heads != 0)
        fail(QLORA_ERROR_FORMAT, "%s: header field dim = %d must be a multiple of n_heads = %d", file.c_str(), c.dim,
             c.n_heads);
    L.head_size = c.dim / c.n_heads;
    L.kv_dim = static_cast<int64_t>(c.dim) * c.n_kv_heads / c.n_heads;

    // Sizes in floats, in __int128 so no header can overflow them.
    using i128 = __int128;
    const i128 dim = c.dim, hid = c.hidden_dim, nl = c.n_layers, voc = c.vocab_size, kv = L.kv_dim;
    const i128 n[12] = {voc * dim, nl * dim, nl * dim * dim, nl * kv * dim, nl * kv * dim, nl * dim * dim,
                        nl * dim, nl * hid * dim, nl * dim * hid, nl * hid * dim, dim, c.shared_classifier ? 0 : voc * dim};
    // run.c skips the legacy RoPE tables as two runs of seq_len * head_size / 2 floats.
    const i128 rope = 2 * ((static_cast<i128>(c.seq_len) * L.head_size) / 2);
    i128 pos = 0;
    i128 offs[12];
    for (int w = 0; w < 11; ++w) {
        offs[w] = pos;
        pos += n[w];
    }
    pos += rope;
    offs[11] = c.shared_classifier ? offs[0] : pos;
    pos += n[11];
    const i128 expected = 28 + 4 * pos;
    const std::string desc = format(
        "dim=%d hidden_dim=%d n_layers=%d n_heads=%d n_kv_heads=%d vocab_size=%d (%s classifier) seq_len=%d", c.dim,
        c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, vocab_raw, c.shared_classifier ? "shared" : "unshared",
        c.seq_len);
    if (expected != static_cast<i128>(size)) {
        if (expected > (static_cast<i128>(1) << 62))
            fail(QLORA_ERROR_FORMAT, "%s: the header (%s) describes more than 2^62 bytes of weights; got a %llu-byte file",
                 file.c_str(), desc.c_str(), static_cast<unsigned long long>(size));
        fail(QLORA_ERROR_FORMAT, "%s: expected %lld bytes for %s, got %llu", file.c_str(),
             static_cast<long long>(expected), desc.c_str(), static_cast<unsigned long long>(size));
    }
    L.expected_bytes = static_cast<int64_t>(expected);
    for (int w = 0; w < 12; ++w) L.offset[w] = static_cast<int64_t>(offs[w]);
    const int64_t d = c.dim, h = c.hidden_dim, V = c.vocab_size;
    const int64_t shapes[12][2] = {{V, d}, {1, d}, {d, d}, {L.kv_dim, d}, {L.kv_dim, d}, {d, d},
                                   {1, d}, {h, d}, {d, h}, {h, d},        {1, d},        {V, d}};
    for (int w = 0; w < 12; ++w) {
        L.rows[w] = shapes[w][0];
        L.cols[w] = shapes[w][1];
        L.per_layer[w] = w >= 1 && w <= 9;
    }
    return L;
}

Llama2cTokenizer parse_llama2c_tokenizer(const uint8_t * data, uint64_t size, int32_t vocab_size,
                                         const std::string & file) {
    if (vocab_size < 0)
        fail(QLORA_ERROR_INVALID_ARGUMENT, "vocab_size must be >= 0 (0: read every token), got %d", vocab_size);
    if (size < 4)
        fail(QLORA_ERROR_FORMAT, "%s: the file is %llu bytes; a llama2.c tokenizer starts with a 4-byte max_token_length",
             file.c_str(), static_cast<unsigned long long>(size));
    Llama2cTokenizer t;
    t.max_token_length = load_i32(data);
    if (t.max_token_length <= 0)
        fail(QLORA_ERROR_FORMAT, "%s: max_token_length = %d must be positive", file.c_str(), t.max_token_length);
    uint64_t pos = 4;
    if (vocab_size > 0) {
        // Every token takes at least 8 bytes: reject a short file before allocating.
        if (static_cast<uint64_t>(vocab_size) * 8 > size - 4)
            fail(QLORA_ERROR_FORMAT,
                 "%s: the file is %llu bytes, too short for %d tokens (each needs at least 8 bytes: score and length)",
                 file.c_str(), static_cast<unsigned long long>(size), vocab_size);
        t.scores.reserve(static_cast<size_t>(vocab_size));
        t.offsets.reserve(static_cast<size_t>(vocab_size) + 1);
    }
    t.offsets.push_back(0);
    for (int64_t i = 0; vocab_size == 0 ? pos < size : i < vocab_size; ++i) {
        if (size - pos < 8)
            fail(QLORA_ERROR_FORMAT,
                 "%s: truncated at token %lld (offset %llu): %llu bytes left, its score and length need 8",
                 file.c_str(), static_cast<long long>(i), static_cast<unsigned long long>(pos),
                 static_cast<unsigned long long>(size - pos));
        const float score = load_f32(data + pos);
        const int32_t len = load_i32(data + pos + 4);
        if (!std::isfinite(score))
            fail(QLORA_ERROR_FORMAT, "%s: token %lld (offset %llu) has score %f; scores must be finite", file.c_str(),
                 static_cast<long long>(i), static_cast<unsigned long long>(pos), static_cast<double>(score));
        if (len < 0)
            fail(QLORA_ERROR_FORMAT, "%s: token %lld (offset %llu) has negative length %d", file.c_str(),
                 static_cast<long long>(i), static_cast<unsigned long long>(pos), len);
        if (len > t.max_token_length)
            fail(QLORA_ERROR_FORMAT, "%s: token %lld (offset %llu) has length %d > max_token_length %d", file.c_str(),
                 static_cast<long long>(i), static_cast<unsigned long long>(pos), len, t.max_token_length);
        pos += 8;
        if (static_cast<uint64_t>(len) > size - pos)
            fail(QLORA_ERROR_FORMAT,
                 "%s: truncated at token %lld: its %d bytes at offset %llu go beyond the end of the file (%llu bytes)",
                 file.c_str(), static_cast<long long>(i), len, static_cast<unsigned long long>(pos),
                 static_cast<unsigned long long>(size));
        t.scores.push_back(score);
        t.bytes.append(reinterpret_cast<const char *>(data + pos), static_cast<size_t>(len));
        t.bytes.push_back('\0');
        t.offsets.push_back(static_cast<int64_t>(t.bytes.size()));
        pos += static_cast<uint64_t>(len);
        if (t.scores.size() > static_cast<size_t>(INT32_MAX - 1))
            fail(QLORA_ERROR_FORMAT, "%s: more than %d tokens", file.c_str(), INT32_MAX - 1);
    }
    if (t.scores.empty()) fail(QLORA_ERROR_FORMAT, "%s: the file holds no tokens", file.c_str());
    if (pos != size)
        fail(QLORA_ERROR_FORMAT, "%s: %llu bytes after the last of %d tokens (is vocab_size right?)", file.c_str(),
             static_cast<unsigned long long>(size - pos), vocab_size);
    return t;
}

} // namespace qlora::io

using namespace qlora;
using namespace qlora::io;

namespace {
qlora_llama2c_model & checked_model(qlora_llama2c_model_t m) {
    QLORA_CHECK_ARG(m != nullptr, "model must not be NULL");
    return *m;
}
qlora_llama2c_tokenizer & checked_tok(qlora_llama2c_tokenizer_t t) {
    QLORA_CHECK_ARG(t != nullptr, "tokenizer must not be NULL");
    return *t;
}
} // namespace

extern "C" {

QLORA_API qlora_status qlora_llama2c_model_open(const char * path, qlora_llama2c_model_t * out) {
    return QLORA_GUARD({
        QLORA_CHECK_NOT_NULL(path);
        QLORA_CHECK_NOT_NULL(out);
        auto m = std::make_unique<qlora_llama2c_model>();
        m->file = MappedFile(path);
        m->layout = parse_llama2c_model(m->file.data(), m->file.size(), path);
        *out = m.release();
    });
}

QLORA_API void qlora_llama2c_model_free(qlora_llama2c_model_t model) { delete model; }

QLORA_API qlora_status qlora_llama2c_model_config(qlora_llama2c_model_t model, qlora_llama2c_config * out) {
    return QLORA_GUARD({
        const auto & m = checked_model(model);
        QLORA_CHECK_NOT_NULL(out);
        *out = m.layout.config;
    });
}

QLORA_API qlora_status qlora_llama2c_model_weight(qlora_llama2c_model_t model, qlora_llama2c_weight which,
                                                  int32_t layer, qlora_view * out) {
    return QLORA_GUARD({
        const auto & m = checked_model(model);
        const int w = raw_enum(which);
        QLORA_CHECK_ARG(w >= 0 && w < 12, "which must be a qlora_llama2c_weight (0..11), got %d", w);
        const auto & L = m.layout;
        const int32_t nl = L.config.n_layers;
        if (L.per_layer[w])
            QLORA_CHECK_ARG(layer >= -1 && layer < nl, "layer must be -1 (all) or in [0, %d) for %s, got %d", nl,
                            kWeightNames[w], layer);
        else
            QLORA_CHECK_ARG(layer == -1, "%s is not a per-layer array; layer must be -1, got %d", kWeightNames[w], layer);
        QLORA_CHECK_NOT_NULL(out);
        const int64_t slice = L.rows[w] * L.cols[w];
        const int64_t off = L.offset[w] + (layer >= 0 ? layer * slice : 0);
        qlora_view v{};
        v.data = const_cast<uint8_t *>(m.file.data() + 28 + 4 * off);
        v.dtype = QLORA_DTYPE_F32;
        v.device = QLORA_DEVICE_HOST;
        v.rows = (L.per_layer[w] && layer < 0) ? L.rows[w] * nl : L.rows[w];
        v.cols = L.cols[w];
        v.stride = 0;
        *out = v;
    });
}

QLORA_API qlora_status qlora_llama2c_tokenizer_open(const char * path, int32_t vocab_size,
                                                    qlora_llama2c_tokenizer_t * out) {
    return QLORA_GUARD({
        QLORA_CHECK_NOT_NULL(path);
        QLORA_CHECK_ARG(vocab_size >= 0, "vocab_size must be >= 0 (0: read every token), got %d", vocab_size);
        QLORA_CHECK_NOT_NULL(out);
        MappedFile f(path);
        auto t = std::make_unique<qlora_llama2c_tokenizer>();
        t->tok = parse_llama2c_tokenizer(f.data(), f.size(), vocab_size, path);
        *out = t.release();
    });
}

QLORA_API void qlora_llama2c_tokenizer_free(qlora_llama2c_tokenizer_t tokenizer) { delete tokenizer; }

QLORA_API qlora_status qlora_llama2c_tokenizer_info(qlora_llama2c_tokenizer_t tokenizer, int32_t * out_vocab_size,
                                                    int32_t * out_max_token_length) {
    return QLORA_GUARD({
        const auto & t = checked_tok(tokenizer);
        QLORA_CHECK_NOT_NULL(out_vocab_size);
        QLORA_CHECK_NOT_NULL(out_max_token_length);
        *out_vocab_size = t.tok.vocab_size();
        *out_max_token_length = t.tok.max_token_length;
    });
}

QLORA_API qlora_status qlora_llama2c_tokenizer_token(qlora_llama2c_tokenizer_t tokenizer, int32_t id,
                                                     const char ** out_piece, int32_t * out_length,
                                                     float * out_score) {
    return QLORA_GUARD({
        const auto & t = checked_tok(tokenizer);
        QLORA_CHECK_ARG(id >= 0 && id < t.tok.vocab_size(), "id %d is out of range [0, %d)", id, t.tok.vocab_size());
        QLORA_CHECK_NOT_NULL(out_piece);
        QLORA_CHECK_NOT_NULL(out_length);
        QLORA_CHECK_NOT_NULL(out_score);
        const int64_t b = t.tok.offsets[static_cast<size_t>(id)], e = t.tok.offsets[static_cast<size_t>(id) + 1];
        *out_piece = t.tok.bytes.data() + b;
        *out_length = static_cast<int32_t>(e - b - 1);
        *out_score = t.tok.scores[static_cast<size_t>(id)];
    });
}

} // extern "C"

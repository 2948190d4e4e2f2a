// llama2.c checkpoints: model.bin (qlora_llama2c_model_open) and
// tokenizer.bin (qlora_llama2c_tokenizer_open).
//
// model input: the file. Properties: FORMAT or UNSUPPORTED (a version-1
// export) naming the file, or success with a positive config in which every
// weight view (whole arrays and each layer's slice) lies inside the file,
// is readable, and follows the one before it; bad `which`/`layer` arguments
// are INVALID_ARGUMENT.
//
// tokenizer input: byte 0 picks vocab_size (0 = read to the end, else that
// byte), the rest is the file. Properties: FORMAT naming the file, or
// success with exactly vocab_size tokens whose pieces are NUL-terminated,
// no longer than max_token_length, with finite scores.
#include "fuzz_common.hpp"

#include <cmath>
#include <string>

namespace qfuzz {

int qfuzz_llama2c_model(const uint8_t * data, size_t size) {
    TempFile file(data, size, ".bin");
    qlora_llama2c_model_t m = nullptr;
    const qlora_status st = qlora_llama2c_model_open(file.path().c_str(), &m);
    check_status(st, "qlora_llama2c_model_open", {QLORA_ERROR_FORMAT, QLORA_ERROR_UNSUPPORTED});
    if (st != QLORA_OK) {
        QFUZZ_CHECK(m == nullptr, "open failed but wrote its out-param");
        QFUZZ_CHECK(std::string(qlora_last_error()).find(file.path()) != std::string::npos,
                    "the message must name the file: %s", qlora_last_error());
        return 0;
    }
    qlora_llama2c_config c{};
    check_status(qlora_llama2c_model_config(m, &c), "qlora_llama2c_model_config", {});
    QFUZZ_CHECK(c.dim > 0 && c.hidden_dim > 0 && c.n_layers > 0 && c.n_heads > 0 && c.n_kv_heads > 0 &&
                    c.vocab_size > 0 && c.seq_len > 0 && (c.shared_classifier == 0 || c.shared_classifier == 1),
                "config has a non-positive field");
    QFUZZ_CHECK(c.n_heads % c.n_kv_heads == 0 && c.dim % c.n_heads == 0, "head counts do not divide");

    const uint8_t * base = nullptr;
    const uint8_t * prev_end = nullptr;
    for (int w = 0; w < 12; ++w) {
        qlora_view v{};
        const qlora_status ws = qlora_llama2c_model_weight(m, static_cast<qlora_llama2c_weight>(w), -1, &v);
        check_status(ws, "qlora_llama2c_model_weight", {});
        if (ws != QLORA_OK) continue;
        const auto * p = static_cast<const uint8_t *>(v.data);
        if (w == 0) base = p - 28;
        const size_t bytes = static_cast<size_t>(v.rows * v.cols) * 4;
        QFUZZ_CHECK(v.dtype == QLORA_DTYPE_F32 && v.rows >= 1 && v.cols >= 1, "weight %d view", w);
        QFUZZ_CHECK(p >= base + 28 && p + bytes <= base + size, "weight %d [%td, +%zu) outside the %zu-byte file", w,
                    p - base, bytes, size);
        if (w <= 10) {
            if (prev_end) QFUZZ_CHECK(p == prev_end, "weight %d does not follow weight %d", w, w - 1);
            prev_end = p + bytes;
        } else {
            QFUZZ_CHECK(c.shared_classifier ? p == base + 28 : p >= prev_end, "wcls position");
        }
        touch(p, bytes);
        // Per-layer slices tile the whole array.
        const bool per_layer = w >= 1 && w <= 9;
        for (int32_t layer = -2; layer <= c.n_layers && layer < 4; ++layer) {
            if (layer == -1) continue;
            qlora_view s{};
            const qlora_status ls = qlora_llama2c_model_weight(m, static_cast<qlora_llama2c_weight>(w), layer, &s);
            const bool valid = per_layer && layer >= 0 && layer < c.n_layers;
            check_status(ls, "qlora_llama2c_model_weight", {QLORA_ERROR_INVALID_ARGUMENT});
            QFUZZ_CHECK((ls == QLORA_OK) == valid, "weight %d layer %d: status %s", w, layer, qlora_status_string(ls));
            if (ls == QLORA_OK) {
                const size_t sb = static_cast<size_t>(s.rows * s.cols) * 4;
                QFUZZ_CHECK(static_cast<const uint8_t *>(s.data) == p + static_cast<size_t>(layer) * sb &&
                                s.rows * c.n_layers == v.rows && s.cols == v.cols,
                            "weight %d layer %d slice", w, layer);
            }
        }
    }
    qlora_view v{};
    for (int32_t which : {-1, 12, 1000}) {
        qlora_llama2c_weight bad;
        std::memcpy(&bad, &which, sizeof bad);
        check_status(qlora_llama2c_model_weight(m, bad, -1, &v), "qlora_llama2c_model_weight",
                     {QLORA_ERROR_INVALID_ARGUMENT});
    }
    qlora_llama2c_model_free(m);
    return 0;
}

int qfuzz_llama2c_tokenizer(const uint8_t * data, size_t size) {
    if (size == 0) return 0;
    const int32_t vocab = data[0];
    TempFile file(data + 1, size - 1, ".bin");
    qlora_llama2c_tokenizer_t t = nullptr;
    const qlora_status st = qlora_llama2c_tokenizer_open(file.path().c_str(), vocab, &t);
    check_status(st, "qlora_llama2c_tokenizer_open", {QLORA_ERROR_FORMAT});
    if (st != QLORA_OK) {
        QFUZZ_CHECK(t == nullptr, "open failed but wrote its out-param");
        QFUZZ_CHECK(std::string(qlora_last_error()).find(file.path()) != std::string::npos,
                    "the message must name the file: %s", qlora_last_error());
        return 0;
    }
    int32_t n = -1, max_len = -1;
    check_status(qlora_llama2c_tokenizer_info(t, &n, &max_len), "qlora_llama2c_tokenizer_info", {});
    QFUZZ_CHECK(n >= 1 && (vocab == 0 || n == vocab) && max_len >= 1, "vocab %d, max_token_length %d", n, max_len);
    int64_t total = 4;
    for (int32_t id = 0; id < n; ++id) {
        const char * piece = nullptr;
        int32_t len = -1;
        float score = NAN;
        check_status(qlora_llama2c_tokenizer_token(t, id, &piece, &len, &score), "qlora_llama2c_tokenizer_token", {});
        QFUZZ_CHECK(piece != nullptr && len >= 0 && len <= max_len && std::isfinite(score), "token %d", id);
        touch(piece, static_cast<size_t>(len) + 1);
        QFUZZ_CHECK(piece[len] == '\0', "token %d is not NUL-terminated", id);
        total += 8 + len;
    }
    QFUZZ_CHECK(total == static_cast<int64_t>(size - 1), "tokens account for %lld of %zu bytes",
                static_cast<long long>(total), size - 1);
    const char * piece = nullptr;
    int32_t len = 0;
    float score = 0;
    for (int32_t id : {-1, n, INT32_MAX})
        check_status(qlora_llama2c_tokenizer_token(t, id, &piece, &len, &score), "qlora_llama2c_tokenizer_token",
                     {QLORA_ERROR_INVALID_ARGUMENT});
    qlora_llama2c_tokenizer_free(t);
    return 0;
}

} // namespace qfuzz

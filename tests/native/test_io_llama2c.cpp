// llama2.c model.bin and tokenizer.bin: synthetic files written here (layout
// from FORMATS.md / run.c, independent of the reader), every header and
// length error, truncation at every byte, and the real default model.
#include "core/error.hpp"
#include "io/llama2c.hpp"
#include "io_test_util.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <random>
#include <unistd.h>

using namespace iotest;

namespace {

struct Cfg {
    int32_t dim = 8, hidden = 12, layers = 2, heads = 4, kv_heads = 2, vocab = 10, seq = 6;
};

// A model.bin built from the layout in FORMATS.md: the arrays (as float
// vectors, for comparison) and the file bytes.
struct SynthModel {
    Cfg cfg;
    bool shared = true;
    std::vector<std::vector<float>> arrays; // 12 entries in qlora_llama2c_weight order (wcls empty if shared)
    Bytes bytes;

    SynthModel(Cfg c, bool shared_) : cfg(c), shared(shared_) {
        const int64_t d = c.dim, h = c.hidden, L = c.layers, V = c.vocab, kv = d * c.kv_heads / c.heads,
                      hs = d / c.heads;
        const int64_t sizes[12] = {V * d, L * d, L * d * d, L * kv * d, L * kv * d, L * d * d,
                                   L * d, L * h * d, L * d * h, L * h * d, d, shared ? 0 : V * d};
        std::mt19937 rng(99);
        std::normal_distribution<float> nd(0.0f, 1.0f);
        const int32_t header[7] = {c.dim, c.hidden, c.layers, c.heads, c.kv_heads, shared ? c.vocab : -c.vocab, c.seq};
        append(bytes, header, sizeof header);
        for (int w = 0; w < 12; ++w) {
            arrays.emplace_back(static_cast<size_t>(sizes[w]));
            for (auto & v : arrays.back()) v = nd(rng);
            if (w == 11) {
                std::vector<float> rope(static_cast<size_t>(c.seq * hs), 7.0f); // legacy freq_cis real + imag
                append(bytes, rope.data(), rope.size() * 4);
            }
            append(bytes, arrays.back().data(), arrays.back().size() * 4);
        }
    }
};

Bytes tokenizer_bytes(int32_t max_len, const std::vector<std::pair<float, std::string>> & toks) {
    Bytes b;
    append_pod<int32_t>(b, max_len);
    for (const auto & [score, piece] : toks) {
        append_pod<float>(b, score);
        append_pod<int32_t>(b, static_cast<int32_t>(piece.size()));
        append(b, piece);
    }
    return b;
}

qlora_status open_model(const std::string & path, Model & m) {
    qlora_llama2c_model_t raw = nullptr;
    const qlora_status st = qlora_llama2c_model_open(path.c_str(), &raw);
    m.reset(raw);
    return st;
}

qlora_status open_tok(const std::string & path, int32_t vocab, Tok & t) {
    qlora_llama2c_tokenizer_t raw = nullptr;
    const qlora_status st = qlora_llama2c_tokenizer_open(path.c_str(), vocab, &raw);
    t.reset(raw);
    return st;
}

std::string token(qlora_llama2c_tokenizer_t t, int32_t id, float * score = nullptr) {
    const char * p = nullptr;
    int32_t len = -1;
    float s = 0;
    EXPECT_EQ(qlora_llama2c_tokenizer_token(t, id, &p, &len, &s), QLORA_OK) << qlora_last_error();
    if (score) *score = s;
    return p ? std::string(p, static_cast<size_t>(len)) : std::string();
}

} // namespace

TEST(IoLlama2c, ReadsEveryArrayOfASyntheticModel) {
    TempDir dir;
    for (bool shared : {true, false}) {
        SCOPED_TRACE(shared ? "shared classifier" : "unshared classifier");
        SynthModel s(Cfg{}, shared);
        const std::string path = dir.file("model.bin");
        write_file(path, s.bytes);
        Model m;
        ASSERT_EQ(open_model(path, m), QLORA_OK) << qlora_last_error();
        qlora_llama2c_config c{};
        ASSERT_EQ(qlora_llama2c_model_config(m.get(), &c), QLORA_OK);
        EXPECT_EQ(c.dim, 8);
        EXPECT_EQ(c.hidden_dim, 12);
        EXPECT_EQ(c.n_layers, 2);
        EXPECT_EQ(c.n_heads, 4);
        EXPECT_EQ(c.n_kv_heads, 2);
        EXPECT_EQ(c.vocab_size, 10);
        EXPECT_EQ(c.seq_len, 6);
        EXPECT_EQ(c.shared_classifier, shared ? 1 : 0);
        const int64_t kv = 4;
        const int64_t slice_shape[12][2] = {{10, 8}, {1, 8}, {8, 8}, {kv, 8}, {kv, 8}, {8, 8},
                                            {1, 8},  {12, 8}, {8, 12}, {12, 8}, {1, 8}, {10, 8}};
        for (int w = 0; w < 12; ++w) {
            const bool per_layer = w >= 1 && w <= 9;
            const std::vector<float> & want = (w == 11 && shared) ? s.arrays[0] : s.arrays[static_cast<size_t>(w)];
            qlora_view v{};
            ASSERT_EQ(qlora_llama2c_model_weight(m.get(), static_cast<qlora_llama2c_weight>(w), -1, &v), QLORA_OK)
                << qlora_last_error();
            EXPECT_EQ(v.dtype, QLORA_DTYPE_F32);
            EXPECT_EQ(v.rows, slice_shape[w][0] * (per_layer ? 2 : 1)) << w;
            EXPECT_EQ(v.cols, slice_shape[w][1]) << w;
            ASSERT_EQ(static_cast<size_t>(v.rows * v.cols), want.size()) << w;
            EXPECT_EQ(0, std::memcmp(v.data, want.data(), want.size() * 4)) << "array " << w;
            if (!per_layer) continue;
            for (int32_t l = 0; l < 2; ++l) {
                qlora_view lv{};
                ASSERT_EQ(qlora_llama2c_model_weight(m.get(), static_cast<qlora_llama2c_weight>(w), l, &lv), QLORA_OK);
                EXPECT_EQ(lv.rows, slice_shape[w][0]);
                EXPECT_EQ(lv.cols, slice_shape[w][1]);
                const size_t n = static_cast<size_t>(lv.rows * lv.cols);
                EXPECT_EQ(0, std::memcmp(lv.data, want.data() + l * n, n * 4)) << "array " << w << " layer " << l;
            }
        }
        qlora_view emb{}, cls{};
        ASSERT_EQ(qlora_llama2c_model_weight(m.get(), QLORA_LLAMA2C_TOKEN_EMBEDDING, -1, &emb), QLORA_OK);
        ASSERT_EQ(qlora_llama2c_model_weight(m.get(), QLORA_LLAMA2C_WCLS, -1, &cls), QLORA_OK);
        EXPECT_EQ(emb.data == cls.data, shared);

        qlora_view v{};
        EXPECT_TRUE(failed_with(qlora_llama2c_model_weight(m.get(), QLORA_LLAMA2C_WQ, 2, &v), QLORA_ERROR_INVALID_ARGUMENT,
                                {"layer must be -1 (all) or in [0, 2) for wq, got 2"}));
        EXPECT_TRUE(failed_with(qlora_llama2c_model_weight(m.get(), QLORA_LLAMA2C_RMS_FINAL, 0, &v),
                                QLORA_ERROR_INVALID_ARGUMENT, {"rms_final is not a per-layer array; layer must be -1, got 0"}));
        EXPECT_TRUE(failed_with(qlora_llama2c_model_weight(m.get(), static_cast<qlora_llama2c_weight>(12), -1, &v),
                                QLORA_ERROR_INVALID_ARGUMENT, {"which must be a qlora_llama2c_weight (0..11), got 12"}));
    }
}

TEST(IoLlama2c, RejectsBadHeadersAndLengths) {
    TempDir dir;
    const std::string path = dir.file("model.bin");
    Model m;
    auto with_header = [&](std::array<int32_t, 7> h, size_t extra_floats) {
        Bytes b;
        append(b, h.data(), 28);
        b.resize(b.size() + extra_floats * 4, 0);
        write_file(path, b);
        return open_model(path, m);
    };
    EXPECT_TRUE(failed_with(with_header({0, 12, 2, 4, 2, 10, 6}, 0), QLORA_ERROR_FORMAT,
                            {path, "header field dim = 0 must be positive"}));
    EXPECT_TRUE(failed_with(with_header({8, -12, 2, 4, 2, 10, 6}, 0), QLORA_ERROR_FORMAT, {"hidden_dim = -12 must be positive"}));
    EXPECT_TRUE(failed_with(with_header({8, 12, 0, 4, 2, 10, 6}, 0), QLORA_ERROR_FORMAT, {"n_layers = 0 must be positive"}));
    EXPECT_TRUE(failed_with(with_header({8, 12, 2, 0, 2, 10, 6}, 0), QLORA_ERROR_FORMAT, {"n_heads = 0 must be positive"}));
    EXPECT_TRUE(failed_with(with_header({8, 12, 2, 4, 0, 10, 6}, 0), QLORA_ERROR_FORMAT, {"n_kv_heads = 0 must be positive"}));
    EXPECT_TRUE(failed_with(with_header({8, 12, 2, 4, 2, 10, -1}, 0), QLORA_ERROR_FORMAT, {"seq_len = -1 must be positive"}));
    EXPECT_TRUE(failed_with(with_header({8, 12, 2, 4, 2, 0, 6}, 0), QLORA_ERROR_FORMAT, {"vocab_size = 0 is invalid"}));
    EXPECT_TRUE(failed_with(with_header({8, 12, 2, 4, 2, INT32_MIN, 6}, 0), QLORA_ERROR_FORMAT, {"is invalid"}));
    EXPECT_TRUE(failed_with(with_header({8, 12, 2, 4, 3, 10, 6}, 0), QLORA_ERROR_FORMAT,
                            {"n_kv_heads = 3 must divide n_heads = 4"}));
    EXPECT_TRUE(failed_with(with_header({8, 12, 2, 4, 8, 10, 6}, 0), QLORA_ERROR_FORMAT,
                            {"n_kv_heads = 8 must divide n_heads = 4"}));
    EXPECT_TRUE(failed_with(with_header({10, 12, 2, 4, 2, 10, 6}, 0), QLORA_ERROR_FORMAT,
                            {"dim = 10 must be a multiple of n_heads = 4"}));
    // Exact length: the expected size spelled out, for both classifier kinds.
    const Cfg c;
    const int64_t shared_floats = 10 * 8 + 2 * 8 + 2 * 64 + 2 * 2 * 4 * 8 + 2 * 64 + 2 * 8 + 3 * 2 * 12 * 8 + 8 + 6 * 2;
    EXPECT_TRUE(failed_with(with_header({8, 12, 2, 4, 2, 10, 6}, 5), QLORA_ERROR_FORMAT,
                            {path + ": expected " + std::to_string(28 + 4 * shared_floats) +
                             " bytes for dim=8 hidden_dim=12 n_layers=2 n_heads=4 n_kv_heads=2 vocab_size=10 (shared "
                             "classifier) seq_len=6, got 48"}));
    EXPECT_TRUE(failed_with(with_header({8, 12, 2, 4, 2, -10, 6}, static_cast<size_t>(shared_floats)), QLORA_ERROR_FORMAT,
                            {"expected " + std::to_string(28 + 4 * (shared_floats + 80)) +
                             " bytes for dim=8 hidden_dim=12 n_layers=2 n_heads=4 n_kv_heads=2 vocab_size=-10 (unshared "
                             "classifier) seq_len=6, got " + std::to_string(28 + 4 * shared_floats)}));
    EXPECT_EQ(with_header({8, 12, 2, 4, 2, 10, 6}, static_cast<size_t>(shared_floats)), QLORA_OK) << qlora_last_error();
    // Huge headers cannot overflow the size computation.
    EXPECT_TRUE(failed_with(with_header({INT32_MAX - 1, INT32_MAX, INT32_MAX, 1, 1, INT32_MAX, INT32_MAX}, 0),
                            QLORA_ERROR_FORMAT, {"describes more than 2^62 bytes of weights; got a 28-byte file"}));
    // Newer export versions are recognised and refused by name.
    Bytes v1(256, 0);
    const uint32_t magic_and_version[2] = {0x616b3432, 2};
    std::memcpy(v1.data(), magic_and_version, 8);
    write_file(path, v1);
    EXPECT_TRUE(failed_with(open_model(path, m), QLORA_ERROR_UNSUPPORTED,
                            {"this is a llama2.c version-2 export (magic \"ak42\"); only the legacy version-0 format"}));
    write_file(path, Bytes(27, 1));
    EXPECT_TRUE(failed_with(open_model(path, m), QLORA_ERROR_FORMAT,
                            {"the file is 27 bytes; a llama2.c model starts with a 28-byte header (7 x int32)"}));
    EXPECT_TRUE(failed_with(open_model(dir.file("none.bin"), m), QLORA_ERROR_IO, {"none.bin", "No such file or directory"}));
    qlora_llama2c_model_t raw = nullptr;
    EXPECT_TRUE(failed_with(qlora_llama2c_model_open(nullptr, &raw), QLORA_ERROR_INVALID_ARGUMENT, {"path must not be NULL"}));
}

TEST(IoLlama2c, ModelTruncatedAtEveryByteIsAFormatError) {
    SynthModel s(Cfg{}, false);
    // In memory through the parser, every prefix; plus one extra byte.
    for (size_t n = 0; n < s.bytes.size(); ++n) {
        try {
            qlora::io::parse_llama2c_model(s.bytes.data(), n, "model.bin");
            FAIL() << "accepted a file truncated to " << n << " bytes";
        } catch (const qlora::Error & e) {
            ASSERT_EQ(e.status(), QLORA_ERROR_FORMAT) << e.what();
        }
    }
    Bytes longer = s.bytes;
    longer.push_back(0);
    EXPECT_THROW(qlora::io::parse_llama2c_model(longer.data(), longer.size(), "model.bin"), qlora::Error);
    EXPECT_NO_THROW(qlora::io::parse_llama2c_model(s.bytes.data(), s.bytes.size(), "model.bin"));
    // And through the file API for a sample of lengths.
    TempDir dir;
    const std::string path = dir.file("model.bin");
    for (size_t n : {size_t{0}, size_t{1}, size_t{27}, size_t{28}, s.bytes.size() / 2, s.bytes.size() - 1}) {
        write_file(path, Bytes(s.bytes.begin(), s.bytes.begin() + static_cast<std::ptrdiff_t>(n)));
        Model m;
        EXPECT_TRUE(failed_with(open_model(path, m), QLORA_ERROR_FORMAT, {path})) << n;
    }
}

TEST(IoLlama2c, ReadsATokenizer) {
    TempDir dir;
    const std::vector<std::pair<float, std::string>> toks = {
        {0.0f, "<unk>"}, {0.0f, "\n<s>\n"}, {0.0f, "\n</s>\n"}, {0.0f, std::string(1, '\0')},
        {-1.5f, " the"}, {-2.25f, ""},      {-1e6f, "\xc3\xbf"}};
    const std::string path = dir.file("tokenizer.bin");
    write_file(path, tokenizer_bytes(6, toks));
    for (int32_t vocab : {0, 7}) {
        Tok t;
        ASSERT_EQ(open_tok(path, vocab, t), QLORA_OK) << qlora_last_error();
        int32_t n = 0, max_len = 0;
        ASSERT_EQ(qlora_llama2c_tokenizer_info(t.get(), &n, &max_len), QLORA_OK);
        EXPECT_EQ(n, 7);
        EXPECT_EQ(max_len, 6);
        for (int32_t i = 0; i < 7; ++i) {
            float score = 0;
            EXPECT_EQ(token(t.get(), i, &score), toks[static_cast<size_t>(i)].second) << i;
            EXPECT_EQ(score, toks[static_cast<size_t>(i)].first);
        }
        const char * p = nullptr;
        int32_t len = 0;
        float sc = 0;
        ASSERT_EQ(qlora_llama2c_tokenizer_token(t.get(), 4, &p, &len, &sc), QLORA_OK);
        EXPECT_EQ(p[len], '\0') << "pieces are NUL-terminated";
        EXPECT_TRUE(failed_with(qlora_llama2c_tokenizer_token(t.get(), 7, &p, &len, &sc), QLORA_ERROR_INVALID_ARGUMENT,
                                {"id 7 is out of range [0, 7)"}));
        EXPECT_TRUE(failed_with(qlora_llama2c_tokenizer_token(t.get(), -1, &p, &len, &sc), QLORA_ERROR_INVALID_ARGUMENT,
                                {"id -1 is out of range"}));
    }
}

TEST(IoLlama2c, RejectsBadTokenizers) {
    TempDir dir;
    const std::string path = dir.file("tokenizer.bin");
    Tok t;
    auto put = [&](const Bytes & b, int32_t vocab) {
        write_file(path, b);
        return open_tok(path, vocab, t);
    };
    const std::vector<std::pair<float, std::string>> ok = {{0.0f, "a"}, {-1.0f, "bc"}, {-2.0f, "def"}};
    EXPECT_TRUE(failed_with(put(tokenizer_bytes(0, ok), 3), QLORA_ERROR_FORMAT, {path, "max_token_length = 0 must be positive"}));
    EXPECT_TRUE(failed_with(put(tokenizer_bytes(2, ok), 3), QLORA_ERROR_FORMAT,
                            {"token 2 (offset 23) has length 3 > max_token_length 2"}));
    Bytes neg = tokenizer_bytes(4, {{0.0f, "a"}});
    append_pod<float>(neg, 0.0f);
    append_pod<int32_t>(neg, -5);
    EXPECT_TRUE(failed_with(put(neg, 0), QLORA_ERROR_FORMAT, {"token 1 (offset 13) has negative length -5"}));
    EXPECT_TRUE(failed_with(put(tokenizer_bytes(4, {{NAN, "a"}}), 1), QLORA_ERROR_FORMAT,
                            {"token 0 (offset 4) has score nan; scores must be finite"}));
    EXPECT_TRUE(failed_with(put(tokenizer_bytes(4, ok), 2), QLORA_ERROR_FORMAT,
                            {"11 bytes after the last of 2 tokens (is vocab_size right?)"}));
    EXPECT_TRUE(failed_with(put(tokenizer_bytes(4, ok), 5), QLORA_ERROR_FORMAT,
                            {"the file is 34 bytes, too short for 5 tokens (each needs at least 8 bytes: score and length)"}));
    EXPECT_TRUE(failed_with(put(tokenizer_bytes(4, {{0.0f, "abcd"}, {0.0f, "abcd"}, {0.0f, "abcd"}}), 4), QLORA_ERROR_FORMAT,
                            {"truncated at token 3 (offset 40): 0 bytes left, its score and length need 8"}));
    EXPECT_TRUE(failed_with(put(tokenizer_bytes(4, {}), 0), QLORA_ERROR_FORMAT, {"the file holds no tokens"}));
    EXPECT_TRUE(failed_with(put(Bytes{1, 0}, 0), QLORA_ERROR_FORMAT,
                            {"the file is 2 bytes; a llama2.c tokenizer starts with a 4-byte max_token_length"}));
    Bytes cut = tokenizer_bytes(4, ok);
    cut.resize(cut.size() - 1);
    EXPECT_TRUE(failed_with(put(cut, 3), QLORA_ERROR_FORMAT,
                            {"truncated at token 2: its 3 bytes at offset 31 go beyond the end of the file (33 bytes)"}));
    qlora_llama2c_tokenizer_t raw = nullptr;
    EXPECT_TRUE(failed_with(qlora_llama2c_tokenizer_open(path.c_str(), -1, &raw), QLORA_ERROR_INVALID_ARGUMENT,
                            {"vocab_size must be >= 0 (0: read every token), got -1"}));
}

TEST(IoLlama2c, TokenizerTruncatedAtEveryByteIsAFormatError) {
    const Bytes full = tokenizer_bytes(5, {{0.0f, "<unk>"}, {-1.0f, "ab"}, {-2.0f, ""}, {-3.0f, "xyz"}});
    for (int32_t vocab : {0, 4}) {
        for (size_t n = 0; n < full.size(); ++n) {
            try {
                const auto t = qlora::io::parse_llama2c_tokenizer(full.data(), n, vocab, "tokenizer.bin");
                // With vocab 0 a prefix ending exactly at a token boundary is a
                // smaller valid tokenizer; anything else must be rejected.
                ASSERT_EQ(vocab, 0) << n;
                ASSERT_LT(t.vocab_size(), 4);
            } catch (const qlora::Error & e) {
                ASSERT_EQ(e.status(), QLORA_ERROR_FORMAT) << e.what();
            }
        }
    }
    std::mt19937 rng(4);
    for (int i = 0; i < 20000; ++i) {
        Bytes b = full;
        b[rng() % b.size()] = static_cast<uint8_t>(rng());
        try {
            qlora::io::parse_llama2c_tokenizer(b.data(), b.size(), static_cast<int32_t>(rng() % 6), "tokenizer.bin");
        } catch (const qlora::Error & e) {
            ASSERT_EQ(e.status(), QLORA_ERROR_FORMAT) << e.what();
        }
    }
}

// ---------------------------------------------------------------------------
// The real default model (stories15M, DESIGN.md)

TEST(IoLlama2c, ReadsTheDefaultModel) {
    const Stories15M s = fetch_stories15m();
    if (!s.why_not.empty()) GTEST_SKIP() << s.why_not;
    Model m;
    ASSERT_EQ(open_model(s.model, m), QLORA_OK) << qlora_last_error();
    qlora_llama2c_config c{};
    ASSERT_EQ(qlora_llama2c_model_config(m.get(), &c), QLORA_OK);
    EXPECT_EQ(c.dim, 288);
    EXPECT_EQ(c.hidden_dim, 768);
    EXPECT_EQ(c.n_layers, 6);
    EXPECT_EQ(c.n_heads, 6);
    EXPECT_EQ(c.n_kv_heads, 6);
    EXPECT_EQ(c.vocab_size, 32000);
    EXPECT_EQ(c.seq_len, 256);
    EXPECT_EQ(c.shared_classifier, 1);
    // Views point where the layout in FORMATS.md says: compare against the
    // file read with plain stdio at offsets computed here.
    const int64_t d = 288, h = 768, L = 6, V = 32000;
    const int64_t off_rms_final = V * d + L * d + 4 * L * d * d + L * d + 3 * L * h * d;
    const int64_t off_w2 = V * d + L * d + 4 * L * d * d + L * d + L * h * d;
    FILE * fp = std::fopen(s.model.c_str(), "rb");
    ASSERT_NE(fp, nullptr);
    auto read_at = [&](int64_t float_offset, size_t n) {
        std::vector<float> v(n);
        std::fseek(fp, static_cast<long>(28 + 4 * float_offset), SEEK_SET);
        EXPECT_EQ(std::fread(v.data(), 4, n, fp), n);
        return v;
    };
    qlora_view v{};
    ASSERT_EQ(qlora_llama2c_model_weight(m.get(), QLORA_LLAMA2C_RMS_FINAL, -1, &v), QLORA_OK);
    EXPECT_EQ(v.cols, 288);
    EXPECT_EQ(0, std::memcmp(v.data, read_at(off_rms_final, 288).data(), 288 * 4));
    ASSERT_EQ(qlora_llama2c_model_weight(m.get(), QLORA_LLAMA2C_W2, 5, &v), QLORA_OK);
    EXPECT_EQ(v.rows, 288);
    EXPECT_EQ(v.cols, 768);
    EXPECT_EQ(0, std::memcmp(v.data, read_at(off_w2 + 5 * d * h, static_cast<size_t>(d * h)).data(), d * h * 4));
    std::fclose(fp);
    // RMSNorm weights of a trained model are positive-ish and finite; the
    // embedding is finite everywhere.
    ASSERT_EQ(qlora_llama2c_model_weight(m.get(), QLORA_LLAMA2C_TOKEN_EMBEDDING, -1, &v), QLORA_OK);
    const float * e = static_cast<const float *>(v.data);
    for (int64_t i = 0; i < V * d; ++i) ASSERT_TRUE(std::isfinite(e[i])) << i;

    // The exact-length message users see for a damaged download (a sparse
    // copy of the header, 4 bytes short).
    TempDir dir;
    const std::string bad = dir.file("model.bin");
    {
        FILE * src = std::fopen(s.model.c_str(), "rb");
        Bytes hdr(28);
        ASSERT_EQ(std::fread(hdr.data(), 1, 28, src), 28u);
        std::fclose(src);
        write_file(bad, hdr);
        ASSERT_EQ(truncate(bad.c_str(), 60816024), 0);
    }
    Model broken;
    EXPECT_TRUE(failed_with(open_model(bad, broken), QLORA_ERROR_FORMAT,
                            {bad + ": expected 60816028 bytes for dim=288 hidden_dim=768 n_layers=6 n_heads=6 "
                                   "n_kv_heads=6 vocab_size=32000 (shared classifier) seq_len=256, got 60816024"}));
}

TEST(IoLlama2c, ReadsTheDefaultTokenizer) {
    const Stories15M s = fetch_stories15m();
    if (!s.why_not.empty()) GTEST_SKIP() << s.why_not;
    Tok t;
    ASSERT_EQ(open_tok(s.tokenizer, 32000, t), QLORA_OK) << qlora_last_error();
    int32_t n = 0, max_len = 0;
    ASSERT_EQ(qlora_llama2c_tokenizer_info(t.get(), &n, &max_len), QLORA_OK);
    EXPECT_EQ(n, 32000);
    EXPECT_GT(max_len, 0);
    // FORMATS.md: ids 0..2 are <unk>, <s>, </s> (stored with newlines);
    // ids 3..258 are the bytes 0x00..0xFF as UTF-8 code points.
    EXPECT_EQ(token(t.get(), 0), "<unk>");
    EXPECT_EQ(token(t.get(), 1), "\n<s>\n");
    EXPECT_EQ(token(t.get(), 2), "\n</s>\n");
    EXPECT_EQ(token(t.get(), 3), std::string(1, '\0'));
    EXPECT_EQ(token(t.get(), 3 + 'A'), "A");
    EXPECT_EQ(token(t.get(), 258), "\xc3\xbf");
    // The reference encoding of "Once upon a time" (with BOS) is
    // [1, 9038, 2501, 263, 931]: its pieces spell the text with the dummy
    // prefix space.
    EXPECT_EQ(token(t.get(), 9038) + token(t.get(), 2501) + token(t.get(), 263) + token(t.get(), 931),
              " Once upon a time");
    int32_t longest = 0;
    for (int32_t i = 0; i < n; ++i) longest = std::max<int32_t>(longest, static_cast<int32_t>(token(t.get(), i).size()));
    EXPECT_EQ(longest, max_len) << "max_token_length is the longest piece";
    // The model's vocab_size must match: a wrong one is refused.
    Tok wrong;
    EXPECT_TRUE(failed_with(open_tok(s.tokenizer, 31999, wrong), QLORA_ERROR_FORMAT, {"bytes after the last of 31999 tokens"}));
}

// Writes the seed corpora of the fuzz targets: small valid files made by the
// library's own writers (safetensors, bitsandbytes 4-bit, optimizer states)
// or laid out by hand after FORMATS.md (llama2.c), plus edge cases.
//
//   qlora_fuzz_seeds <corpus-dir>      (writes <corpus-dir>/<target>/<name>)
//
// The committed corpus (tests/fuzz/corpus) was made with it; re-running it
// rewrites the same files.
#include "harness/fuzz_common.hpp"

#include "io/bnb.hpp"
#include "pager/crc32c.hpp"

#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

namespace {

std::string g_root;

void ok(qlora_status st, const char * what) {
    if (st != QLORA_OK) {
        std::fprintf(stderr, "%s failed: %s\n", what, qlora_last_error());
        std::exit(1);
    }
}

void put(const std::string & target, const std::string & name, const Bytes & b) {
    const fs::path dir = fs::path(g_root) / target;
    fs::create_directories(dir);
    std::ofstream f(dir / name, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char *>(b.data()), static_cast<std::streamsize>(b.size()));
}
void put(const std::string & target, const std::string & name, const std::string & s) {
    put(target, name, Bytes(s.begin(), s.end()));
}

Bytes prefixed(uint8_t first, const Bytes & b) {
    Bytes out{first};
    out.insert(out.end(), b.begin(), b.end());
    return out;
}

template <typename T> void append(Bytes & b, T v) {
    const auto * p = reinterpret_cast<const uint8_t *>(&v);
    b.insert(b.end(), p, p + sizeof v);
}

std::vector<float> ramp(size_t n, float scale) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = scale * std::sin(0.37f * static_cast<float>(i) + 0.1f);
    return v;
}

qlora_context_t context() {
    qlora_context_params p = qlora_context_default_params();
    p.n_threads = 1;
    qlora_context_t c = nullptr;
    ok(qlora_context_create(&p, &c), "context");
    return c;
}

Bytes write_st(qlora_safetensors_writer_t w) {
    qfuzz::TempPath out(".safetensors");
    ok(qlora_safetensors_writer_write(w, out.path().c_str()), "writer_write");
    return qfuzz::read_whole_file(out.path());
}

qlora_view view(void * p, qlora_dtype d, int64_t rows, int64_t cols) {
    return qlora_view{p, d, QLORA_DEVICE_HOST, rows, cols, 0};
}

Bytes st_raw(const std::string & header, const Bytes & data) {
    Bytes b;
    append<uint64_t>(b, header.size());
    b.insert(b.end(), header.begin(), header.end());
    b.insert(b.end(), data.begin(), data.end());
    return b;
}

// A 4-bit weight in bitsandbytes layout.
Bytes bnb_file(qlora_quant_type type, int32_t double_quant, int64_t rows, int64_t cols) {
    qlora_context_t c = context();
    std::vector<float> w = ramp(static_cast<size_t>(rows * cols), 0.05f);
    qlora_view v = view(w.data(), QLORA_DTYPE_F32, rows, cols);
    qlora_quant_params p = qlora_quant_default_params();
    p.quant_type = type;
    p.double_quant = double_quant;
    p.nested_blocksize = 32;
    p.blocksize = 32;
    qlora_q4_tensor_t q = nullptr;
    ok(qlora_q4_quantize(c, &v, &p, &q), "quantize");
    qlora_safetensors_writer_t wr = nullptr;
    ok(qlora_safetensors_writer_create(&wr), "writer");
    ok(qlora_bnb_add_q4(wr, "model.layers.0.mlp.up_proj.", q, 0), "bnb_add_q4");
    ok(qlora_safetensors_writer_set_metadata(wr, "format", "pt"), "metadata");
    Bytes b = write_st(wr);
    qlora_safetensors_writer_free(wr);
    qlora_q4_free(q);
    qlora_context_free(c);
    return b;
}

void safetensors_seeds() {
    {
        qlora_safetensors_writer_t w = nullptr;
        ok(qlora_safetensors_writer_create(&w), "writer");
        std::vector<float> a = ramp(6, 1.0f);
        qlora_view va = view(a.data(), QLORA_DTYPE_F32, 2, 3);
        const int64_t sa[2] = {2, 3};
        ok(qlora_safetensors_writer_add(w, "weight", &va, 2, sa, 0), "add");
        uint8_t u[5] = {1, 2, 3, 4, 5};
        qlora_view vu = view(u, QLORA_DTYPE_U8, 1, 5);
        const int64_t su[1] = {5};
        ok(qlora_safetensors_writer_add(w, "bytes", &vu, 1, su, 0), "add");
        uint16_t h[4] = {0x3C00, 0xBC00, 0x0001, 0x7BFF};
        qlora_view vh = view(h, QLORA_DTYPE_BF16, 1, 4);
        const int64_t sh[3] = {1, 2, 2};
        ok(qlora_safetensors_writer_add(w, "bf16.3d", &vh, 3, sh, 0), "add");
        double s = 3.5;
        qlora_view vs = view(&s, QLORA_DTYPE_F64, 1, 1);
        ok(qlora_safetensors_writer_add(w, "scalar", &vs, 0, nullptr, 0), "add");
        ok(qlora_safetensors_writer_set_metadata(w, "format", "pt"), "metadata");
        ok(qlora_safetensors_writer_set_metadata(w, "note", "caf\xc3\xa9 \xe2\x9c\x93"), "metadata");
        put("safetensors", "mixed_dtypes_meta.safetensors", write_st(w));
        qlora_safetensors_writer_free(w);
    }
    {
        // every dtype, one element each
        qlora_safetensors_writer_t w = nullptr;
        ok(qlora_safetensors_writer_create(&w), "writer");
        uint8_t raw[8] = {1, 0, 0, 0, 0, 0, 0, 0};
        for (int d = 0; d <= QLORA_DTYPE_F8_E5M2; ++d) {
            qlora_view v = view(raw, static_cast<qlora_dtype>(d), 1, 1);
            const int64_t one = 1;
            const std::string name = "d" + std::to_string(d);
            ok(qlora_safetensors_writer_add(w, name.c_str(), &v, 1, &one, 0), "add");
        }
        put("safetensors", "every_dtype.safetensors", write_st(w));
        qlora_safetensors_writer_free(w);
    }
    put("safetensors", "bnb_nf4_dq.safetensors", bnb_file(QLORA_QUANT_NF4, 1, 4, 40));
    put("safetensors", "bnb_fp4.safetensors", bnb_file(QLORA_QUANT_FP4, 0, 3, 33));
    // Edge cases laid out by hand.
    put("safetensors", "empty_header.safetensors", st_raw("{}", {}));
    put("safetensors", "zero_elements.safetensors",
        st_raw(R"({"z":{"dtype":"F32","shape":[0,4],"data_offsets":[0,0]},"__metadata__":{}})", {}));
    put("safetensors", "padded_header.safetensors",
        st_raw(R"({"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}      )", {7, 8, 9}));
    put("safetensors", "overlap.safetensors",
        st_raw(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}})",
               {1, 2, 3}));
    put("safetensors", "truncated.safetensors", Bytes{0x40, 0, 0, 0, 0, 0, 0, 0, '{', '"'});
    put("safetensors", "huge_header_length.safetensors", Bytes{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, '{', '}'});
}

void index_seeds() {
    // u16 n, index, u16 m, shard a, rest shard b
    auto make = [](const std::string & index, const Bytes & a, const Bytes & b) {
        Bytes out;
        append<uint16_t>(out, static_cast<uint16_t>(index.size()));
        out.insert(out.end(), index.begin(), index.end());
        append<uint16_t>(out, static_cast<uint16_t>(a.size()));
        out.insert(out.end(), a.begin(), a.end());
        out.insert(out.end(), b.begin(), b.end());
        return out;
    };
    const Bytes a = st_raw(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"__metadata__":{"format":"pt"}})",
                           {0, 0, 0x80, 0x3f});
    const Bytes b = st_raw(R"({"y":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"__metadata__":{"format":"pt"}})",
                           {1, 2});
    put("safetensors_index", "two_shards",
        make(R"({"metadata":{"total_size":6},"weight_map":{"x":"a.safetensors","y":"b.safetensors"}})", a, b));
    put("safetensors_index", "one_shard", make(R"({"weight_map":{"x":"a.safetensors"}})", a, b));
    put("safetensors_index", "path_escape", make(R"({"weight_map":{"x":"../a.safetensors"}})", a, b));
    put("safetensors_index", "wrong_shard", make(R"({"weight_map":{"x":"b.safetensors","y":"a.safetensors"}})", a, b));
}

void quant_state_seeds() {
    qlora_bnb_quant_state s{};
    s.quant_type = QLORA_QUANT_NF4;
    s.blocksize = 64;
    s.dtype = QLORA_DTYPE_BF16;
    s.rows = 4096;
    s.cols = 11008;
    s.double_quant = 1;
    s.nested_blocksize = 256;
    s.nested_offset = 0.0123456789f;
    put("bnb_quant_state", "nf4_dq.json", qlora::io::format_quant_state(s));
    s.quant_type = QLORA_QUANT_FP4;
    s.double_quant = 0;
    s.dtype = QLORA_DTYPE_F16;
    put("bnb_quant_state", "fp4.json", qlora::io::format_quant_state(s));
    put("bnb_quant_state", "partial_nested.json",
        std::string(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [2, 64], "nested_blocksize": 256})"));
    put("bnb_quant_state", "big_offset.json",
        std::string(R"({"quant_type": "nf4", "blocksize": 4096, "dtype": "float32", "shape": [1, 1], "nested_blocksize": 32, "nested_dtype": "float32", "nested_offset": 3.5e38})"));
}

void json_seeds() {
    const char * docs[] = {
        R"({"a":[1,2.5,-0.0,1e-7,1E+300,"x\u00e9\ud83d\ude00"],"b":{"c":null,"d":true,"e":false},"":""})",
        R"([[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]])",
        R"("\"\\\/\b\f\n\r\t")",
        R"(  -9223372036854775808 )",
        R"(9223372036854775808)",
        R"({"dup":1,"dup":2})",
        R"([1,])",
        R"(1e400)",
        R"(0.000000000000000000000000000000000000000000000000000000000000001e-400)",
        "[\"\xc3\x28\"]",
    };
    int i = 0;
    for (const char * d : docs) {
        const std::string s(d);
        put("json", "doc" + std::to_string(i) + "_default", prefixed(0, Bytes(s.begin(), s.end())));
        put("json", "doc" + std::to_string(i) + "_tight", prefixed(0x13, Bytes(s.begin(), s.end())));
        ++i;
    }
}

Bytes llama2c_model(int32_t dim, int32_t hidden, int32_t layers, int32_t heads, int32_t kv_heads, int32_t vocab,
                    int32_t seq) {
    Bytes b;
    for (int32_t v : {dim, hidden, layers, heads, kv_heads, vocab, seq}) append<int32_t>(b, v);
    const int64_t V = vocab < 0 ? -vocab : vocab, kv = static_cast<int64_t>(dim) * kv_heads / heads;
    const int64_t head = dim / heads;
    int64_t floats = V * dim + layers * (dim + dim * dim + 2 * kv * dim + dim * dim + dim + 3 * hidden * dim) + dim +
                     seq * head;
    if (vocab < 0) floats += V * dim;
    for (int64_t i = 0; i < floats; ++i) append<float>(b, 0.01f * static_cast<float>(i % 97) - 0.4f);
    return b;
}

void llama2c_seeds() {
    put("llama2c_model", "tiny_shared.bin", llama2c_model(8, 16, 2, 2, 1, 10, 4));
    put("llama2c_model", "tiny_unshared.bin", llama2c_model(4, 8, 1, 2, 2, -6, 2));
    Bytes v1;
    append<uint32_t>(v1, 0x616b3432);
    append<int32_t>(v1, 1);
    v1.resize(256, 0);
    put("llama2c_model", "version1_magic.bin", v1);
    Bytes short_header;
    append<int32_t>(short_header, 8);
    put("llama2c_model", "short.bin", short_header);

    auto tokenizer = [](int32_t max_len, const std::vector<std::string> & pieces) {
        Bytes b;
        append<int32_t>(b, max_len);
        float score = 0.0f;
        for (const auto & p : pieces) {
            append<float>(b, score);
            score -= 1.0f;
            append<int32_t>(b, static_cast<int32_t>(p.size()));
            b.insert(b.end(), p.begin(), p.end());
        }
        return b;
    };
    const std::vector<std::string> pieces = {"<unk>", "\n<s>\n", "\n</s>\n", std::string(1, '\0'), "\xc3\xbf", " the", "a"};
    put("llama2c_tokenizer", "vocab7", prefixed(7, tokenizer(6, pieces)));
    put("llama2c_tokenizer", "vocab_to_end", prefixed(0, tokenizer(6, pieces)));
    put("llama2c_tokenizer", "wrong_vocab", prefixed(9, tokenizer(6, pieces)));
    put("llama2c_tokenizer", "too_long_piece", prefixed(0, tokenizer(2, pieces)));
}

void adamw_seeds() {
    struct Case {
        const char * name;
        qlora_optim_state state;
        std::vector<int64_t> sizes;
        int steps;
        uint8_t flags;
    };
    const Case cases[] = {
        {"f32_two_buffers", QLORA_OPTIM_STATE_F32, {300, 1}, 2, 0},
        {"f32_fixcrc", QLORA_OPTIM_STATE_F32, {300, 1}, 1, 4},
        {"8bit_paged", QLORA_OPTIM_STATE_8BIT, {100, 513, 7}, 3, 1 | 2},
        {"8bit_fixcrc", QLORA_OPTIM_STATE_8BIT, {100, 513, 7}, 1, 1 | 4},
        {"f32_no_steps_paged", QLORA_OPTIM_STATE_F32, {600}, 0, 2 | 4},
    };
    qlora_context_t c = context();
    for (const Case & k : cases) {
        qlora_adamw_params p = qlora_adamw_default_params();
        p.state = k.state;
        p.max_grad_norm = 0.3f;
        qlora_adamw_t opt = nullptr;
        ok(qlora_adamw_create(&p, nullptr, &opt), "adamw_create");
        std::vector<std::vector<float>> params, grads;
        std::vector<qlora_view> pv, gv;
        for (int64_t n : k.sizes) {
            ok(qlora_adamw_add_buffer(opt, n, nullptr), "add_buffer");
            params.push_back(ramp(static_cast<size_t>(n), 1.0f));
            grads.push_back(ramp(static_cast<size_t>(n), 0.1f));
        }
        for (size_t i = 0; i < k.sizes.size(); ++i) {
            pv.push_back(view(params[i].data(), QLORA_DTYPE_F32, 1, k.sizes[i]));
            gv.push_back(view(grads[i].data(), QLORA_DTYPE_F32, 1, k.sizes[i]));
        }
        for (int s = 0; s < k.steps; ++s)
            ok(qlora_adamw_step(c, opt, pv.data(), gv.data(), static_cast<int32_t>(pv.size()), nullptr), "step");
        qfuzz::TempPath out(".qopt");
        ok(qlora_adamw_save(opt, out.path().c_str()), "save");
        put("adamw_load", k.name, prefixed(k.flags, qfuzz::read_whole_file(out.path())));
        if (k.flags & 4) {
            // Edge cases of the header fields the checksum does not judge (flag 4 fixes the CRC):
            // the largest and a negative step count.
            Bytes b = qfuzz::read_whole_file(out.path());
            for (int64_t step : {INT64_MAX, INT64_C(-1)}) {
                std::memcpy(b.data() + 32, &step, 8);
                put("adamw_load", std::string(k.name) + (step < 0 ? "_negative_step" : "_max_step"), prefixed(k.flags, b));
            }
        }
        qlora_adamw_free(opt);
    }
    qlora_context_free(c);
    put("adamw_load", "header_only", prefixed(4, Bytes{'Q', 'L', 'O', 'R', 'A', 'O', 'P', 'T', 1, 0, 0, 0}));
}

void pager_seeds() {
    // n_alloc-1, sizes (u16 each), then edits (kind, u32 offset, value)
    auto make = [](std::vector<uint16_t> sizes, std::vector<std::array<uint32_t, 3>> edits) {
        Bytes b{static_cast<uint8_t>(sizes.size() - 1)};
        for (uint16_t s : sizes) append<uint16_t>(b, s);
        for (const auto & e : edits) {
            b.push_back(static_cast<uint8_t>(e[0]));
            append<uint32_t>(b, e[1]);
            b.push_back(static_cast<uint8_t>(e[2]));
        }
        return b;
    };
    put("pager_spill", "clean", make({5000, 100}, {}));
    put("pager_spill", "bit_flip", make({8192, 4096, 1}, {{0, 5000, 0x10}}));
    put("pager_spill", "truncated", make({12000, 3000}, {{1, 6000, 0}}));
    put("pager_spill", "appended", make({4096}, {{2, 0, 200}, {0, 1, 0xff}}));
}

void abi_seeds() {
    // Deterministic pseudo-random programs; libFuzzer evolves them.
    uint64_t s = 12345;
    for (int k = 0; k < 12; ++k) {
        Bytes b(96 + 64 * static_cast<size_t>(k % 4));
        for (auto & x : b) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            x = static_cast<uint8_t>(s >> 56);
        }
        put("abi", "program" + std::to_string(k), b);
    }
}

} // namespace

int main(int argc, char ** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s <corpus-dir>\n", argv[0]);
        return 2;
    }
    g_root = argv[1];
    json_seeds();
    safetensors_seeds();
    index_seeds();
    quant_state_seeds();
    llama2c_seeds();
    adamw_seeds();
    pager_seeds();
    abi_seeds();
    std::printf("seed corpora written under %s\n", g_root.c_str());
    return 0;
}

// bitsandbytes 4-bit checkpoints: the quant-state JSON (byte-identical to
// what bitsandbytes writes, golden strings from CPython's json.dumps), the
// key layout, round trips without re-quantizing, tables read from the file,
// and every inconsistency rejected with the file and key.
#include "core/error.hpp"
#include "io/bnb.hpp"
#include "io/json.hpp"
#include "io_test_util.hpp"
#include "test_util.hpp"

#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <random>

using namespace iotest;

namespace {

qlora_status parse_qs(const std::string & s, qlora_bnb_quant_state * out) {
    const qlora_view v = host_view(s.data(), QLORA_DTYPE_U8, 1, static_cast<int64_t>(s.size()));
    return qlora_bnb_parse_quant_state(&v, out);
}

// Golden strings printed by CPython 3.11 (json.dumps of bitsandbytes'
// non-tensor quant-state dict, in its key order; the offset is a float32
// widened to double, as offset.item() gives it).
const char * kGoldenDQ =
    "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [4096, 11008], "
    "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 0.03747120127081871}";
const char * kGoldenPlain = "{\"quant_type\": \"fp4\", \"blocksize\": 128, \"dtype\": \"float16\", \"shape\": [3, 5]}";

struct Raw {
    qlora_dtype          dtype;
    std::vector<int64_t> shape;
    Bytes                bytes;
};
using RawSet = std::map<std::string, Raw>;

void write_raw(const std::string & path, const RawSet & set) {
    Writer w = make_writer();
    for (const auto & [name, r] : set) {
        const int64_t es = static_cast<int64_t>(qlora_dtype_size(r.dtype));
        const qlora_view v = host_view(r.bytes.data(), r.dtype, 1, static_cast<int64_t>(r.bytes.size()) / es);
        ASSERT_EQ(qlora_safetensors_writer_add(w.get(), name.c_str(), &v, static_cast<int32_t>(r.shape.size()),
                                               r.shape.data(), 0),
                  QLORA_OK)
            << name << ": " << qlora_last_error();
    }
    ASSERT_EQ(qlora_safetensors_writer_write(w.get(), path.c_str()), QLORA_OK) << qlora_last_error();
}

template <typename T> Bytes bytes_of(const T * p, size_t n) {
    Bytes b(n * sizeof(T));
    std::memcpy(b.data(), p, b.size());
    return b;
}

qtest::Q4 quantize(qlora_context_t ctx, const std::vector<float> & x, int64_t rows, int64_t cols,
                   const qlora_quant_params & p) {
    const qlora_view v = host_view(x.data(), QLORA_DTYPE_F32, rows, cols);
    qlora_q4_tensor_t t = nullptr;
    EXPECT_EQ(qlora_q4_quantize(ctx, &v, &p, &t), QLORA_OK) << qlora_last_error();
    return qtest::Q4(t);
}

std::vector<float> dequantize(qlora_context_t ctx, qlora_q4_tensor_t t, int64_t rows, int64_t cols) {
    std::vector<float> out(static_cast<size_t>(rows * cols), -1.0f);
    const qlora_view v = host_view(out.data(), QLORA_DTYPE_F32, rows, cols);
    EXPECT_EQ(qlora_q4_dequantize(ctx, t, &v), QLORA_OK) << qlora_last_error();
    return out;
}

} // namespace

TEST(IoBnb, QuantStateIsWrittenExactlyLikeBitsandbytes) {
    qlora_bnb_quant_state s{};
    s.quant_type = QLORA_QUANT_NF4;
    s.blocksize = 64;
    s.dtype = QLORA_DTYPE_BF16;
    s.rows = 4096;
    s.cols = 11008;
    s.double_quant = 1;
    s.nested_blocksize = 256;
    s.nested_offset = 0x1.32f6cep-5f;
    EXPECT_EQ(qlora::io::format_quant_state(s), kGoldenDQ);
    qlora_bnb_quant_state p{};
    p.quant_type = QLORA_QUANT_FP4;
    p.blocksize = 128;
    p.dtype = QLORA_DTYPE_F16;
    p.rows = 3;
    p.cols = 5;
    EXPECT_EQ(qlora::io::format_quant_state(p), kGoldenPlain);
}

TEST(IoBnb, ParsesQuantStateAndRoundTrips) {
    qlora_bnb_quant_state s{};
    ASSERT_EQ(parse_qs(kGoldenDQ, &s), QLORA_OK) << qlora_last_error();
    EXPECT_EQ(s.quant_type, QLORA_QUANT_NF4);
    EXPECT_EQ(s.blocksize, 64);
    EXPECT_EQ(s.dtype, QLORA_DTYPE_BF16);
    EXPECT_EQ(s.rows, 4096);
    EXPECT_EQ(s.cols, 11008);
    EXPECT_EQ(s.double_quant, 1);
    EXPECT_EQ(s.nested_blocksize, 256);
    EXPECT_EQ(s.nested_offset, 0x1.32f6cep-5f);
    EXPECT_EQ(qlora::io::format_quant_state(s), kGoldenDQ);
    ASSERT_EQ(parse_qs(kGoldenPlain, &s), QLORA_OK) << qlora_last_error();
    EXPECT_EQ(s.quant_type, QLORA_QUANT_FP4);
    EXPECT_EQ(s.double_quant, 0);
    EXPECT_EQ(qlora::io::format_quant_state(s), kGoldenPlain);
    // Key order and spacing are free on input; unknown keys are ignored.
    ASSERT_EQ(parse_qs("{\"shape\":[2,64],\"dtype\":\"float32\",\"blocksize\":32,\"quant_type\":\"nf4\",\"extra\":1}", &s),
              QLORA_OK)
        << qlora_last_error();
    EXPECT_EQ(s.rows, 2);
    EXPECT_EQ(s.blocksize, 32);
}

TEST(IoBnb, RejectsBadQuantStates) {
    const std::string base = "\"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [4, 16]";
    const std::string dq = ", \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 0.5";
    const struct { std::string json; std::string fragment; } cases[] = {
        {"{\"quant_type\": \"nf4\", ", "quant state is not valid JSON: line 1, column 23: unexpected end of input"},
        {"[]", "quant state must be a JSON object, got array"},
        {"{" + base + "}", "quant state: missing \"quant_type\""},
        {"{\"quant_type\": \"int4\", " + base + "}", "\"quant_type\" must be \"nf4\" or \"fp4\", got 'int4'"},
        {"{\"quant_type\": 4, " + base + "}", "\"quant_type\" must be \"nf4\" or \"fp4\", got 4"},
        {"{\"quant_type\": \"nf4\", \"blocksize\": 48, \"dtype\": \"float32\", \"shape\": [4, 16]}",
         "\"blocksize\" must be a power of two in [32, 4096], got 48"},
        {"{\"quant_type\": \"nf4\", \"blocksize\": \"64\", \"dtype\": \"float32\", \"shape\": [4, 16]}",
         "\"blocksize\" must be a power of two in [32, 4096], got '64'"},
        {"{\"quant_type\": \"nf4\", \"blocksize\": 64.0, \"dtype\": \"float32\", \"shape\": [4, 16]}",
         "\"blocksize\" must be a power of two in [32, 4096], got 64.0"},
        {"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float64\", \"shape\": [4, 16]}",
         "\"dtype\" must be \"float32\", \"float16\" or \"bfloat16\", got 'float64'"},
        {"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"shape\": [4, 16]}", "missing \"dtype\""},
        {"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [64]}",
         "\"shape\" must be [rows, cols] with two positive integers (line 1, column 69)"},
        {"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [0, 64]}", "\"shape\" must be [rows, cols]"},
        {"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [-1, 64]}", "\"shape\" must be [rows, cols]"},
        {"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [2097152, 2097152]}",
         "\"shape\" [2097152, 2097152] has too many elements"},
        {"{\"quant_type\": \"nf4\", " + base + ", \"nested_blocksize\": 256, \"nested_dtype\": \"float32\"}",
         "missing \"nested_offset\" (double quantization needs nested_blocksize, nested_dtype and nested_offset)"},
        {"{\"quant_type\": \"nf4\", " + base + ", \"nested_offset\": 0.5}", "missing \"nested_blocksize\""},
        {"{\"quant_type\": \"nf4\", " + base + ", \"nested_blocksize\": 100, \"nested_dtype\": \"float32\", \"nested_offset\": 0.5}",
         "\"nested_blocksize\" must be a power of two in [32, 4096], got 100"},
        {"{\"quant_type\": \"nf4\", " + base + ", \"nested_blocksize\": 256, \"nested_dtype\": \"float16\", \"nested_offset\": 0.5}",
         "\"nested_dtype\" must be \"float32\", got 'float16'"},
        {"{\"quant_type\": \"nf4\", " + base + ", \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": \"x\"}",
         "\"nested_offset\" must be a finite float32 number, got 'x'"},
        {"{\"quant_type\": \"nf4\", " + base + ", \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 1e39}",
         "\"nested_offset\" must be a finite float32 number, got 1e+39"},
        {"{\"quant_type\": \"nf4\", \"quant_type\": \"nf4\", " + base + dq + "}", "line 1, column 23: duplicate key 'quant_type'"},
        {"{\"quant_type\": \"nf4\", " + base + dq + "} x", "unexpected content after the JSON value"},
        {std::string(8, '[') + "1" + std::string(8, ']'), "nesting deeper than 4 levels"},
    };
    for (const auto & c : cases) {
        qlora_bnb_quant_state s{};
        s.blocksize = -99;
        EXPECT_TRUE(failed_with(parse_qs(c.json, &s), QLORA_ERROR_FORMAT, {c.fragment})) << c.json;
        EXPECT_EQ(s.blocksize, -99) << "out-params untouched on failure";
    }
    qlora_bnb_quant_state s{};
    const float f = 1.0f;
    const qlora_view wrong = host_view(&f, QLORA_DTYPE_F32, 1, 1);
    EXPECT_TRUE(failed_with(qlora_bnb_parse_quant_state(&wrong, &s), QLORA_ERROR_INVALID_ARGUMENT,
                            {"json has dtype F32 (0); expected one of U8"}));
}

TEST(IoBnb, WriteReadRoundTripIsExactForEveryLayout) {
    auto ctx = qtest::make_context(QLORA_BACKEND_REF);
    struct Case { qlora_quant_type qt; int32_t bs; int32_t dq; int64_t rows, cols; int32_t borrow; };
    const Case cases[] = {
        {QLORA_QUANT_NF4, 64, 1, 48, 160, 0},  {QLORA_QUANT_NF4, 64, 0, 48, 160, 1},
        {QLORA_QUANT_FP4, 128, 1, 33, 77, 1},  {QLORA_QUANT_FP4, 32, 0, 7, 9, 0},  // odd element count
        {QLORA_QUANT_NF4, 32, 1, 300, 130, 0}, // > 256 blocks: two nested blocks
    };
    TempDir dir;
    for (const auto & c : cases) {
        SCOPED_TRACE(testing::Message() << "qt=" << c.qt << " bs=" << c.bs << " dq=" << c.dq << " " << c.rows << "x" << c.cols);
        const auto x = qtest::random_values(static_cast<size_t>(c.rows * c.cols), qtest::Dist::StudentT, 7);
        qlora_quant_params p = qlora_quant_default_params();
        p.quant_type = c.qt;
        p.blocksize = c.bs;
        p.double_quant = c.dq;
        auto q = quantize(ctx.get(), x, c.rows, c.cols, p);
        const std::string prefix = "model.layers.0.self_attn.q_proj.";
        Writer w = make_writer();
        ASSERT_EQ(qlora_bnb_add_q4(w.get(), prefix.c_str(), q.get(), c.borrow), QLORA_OK) << qlora_last_error();
        const float bias[3] = {1, 2, 3};
        const qlora_view bv = host_view(bias, QLORA_DTYPE_F32, 1, 3);
        const int64_t three = 3;
        ASSERT_EQ(qlora_safetensors_writer_add(w.get(), (prefix + "bias").c_str(), &bv, 1, &three, 0), QLORA_OK);
        const std::string path = dir.file("bnb.safetensors");
        ASSERT_EQ(qlora_safetensors_writer_write(w.get(), path.c_str()), QLORA_OK) << qlora_last_error();

        // The key layout of FORMATS.md, checked key by key.
        St f;
        ASSERT_EQ(open_st(path, f), QLORA_OK) << qlora_last_error();
        const int64_t numel = c.rows * c.cols, nb = (numel + c.bs - 1) / c.bs, nnb = (nb + 255) / 256;
        const std::string qs_key = prefix + "weight.quant_state.bitsandbytes__" + (c.qt == QLORA_QUANT_NF4 ? "nf4" : "fp4");
        std::map<std::string, std::pair<qlora_dtype, std::vector<int64_t>>> want = {
            {prefix + "weight", {QLORA_DTYPE_U8, {(numel + 1) / 2, 1}}},
            {prefix + "weight.absmax", {c.dq ? QLORA_DTYPE_U8 : QLORA_DTYPE_F32, {nb}}},
            {prefix + "weight.quant_map", {QLORA_DTYPE_F32, {16}}},
            {prefix + "bias", {QLORA_DTYPE_F32, {3}}},
        };
        if (c.dq) {
            want[prefix + "weight.nested_absmax"] = {QLORA_DTYPE_F32, {nnb}};
            want[prefix + "weight.nested_quant_map"] = {QLORA_DTYPE_F32, {256}};
        }
        int64_t n = 0;
        ASSERT_EQ(qlora_safetensors_count(f.get(), &n), QLORA_OK);
        EXPECT_EQ(n, static_cast<int64_t>(want.size()) + 1);
        for (const auto & [name, spec] : want) {
            int64_t idx = -1;
            ASSERT_EQ(qlora_safetensors_find(f.get(), name.c_str(), &idx), QLORA_OK);
            ASSERT_GE(idx, 0) << name;
            qlora_safetensors_tensor t{};
            ASSERT_EQ(qlora_safetensors_info(f.get(), idx, &t), QLORA_OK);
            EXPECT_EQ(t.dtype, spec.first) << name;
            ASSERT_EQ(t.n_dims, static_cast<int32_t>(spec.second.size())) << name;
            for (size_t d = 0; d < spec.second.size(); ++d) EXPECT_EQ(t.shape[d], spec.second[d]) << name;
        }
        int64_t qi = -1;
        ASSERT_EQ(qlora_safetensors_find(f.get(), qs_key.c_str(), &qi), QLORA_OK);
        ASSERT_GE(qi, 0);
        qlora_view qv{};
        ASSERT_EQ(qlora_safetensors_data(f.get(), qi, &qv), QLORA_OK);
        qlora_q4_info info{};
        ASSERT_EQ(qlora_q4_get_info(q.get(), &info), QLORA_OK);
        std::string expected_qs = qlora::format(
            "{\"quant_type\": \"%s\", \"blocksize\": %d, \"dtype\": \"float32\", \"shape\": [%lld, %lld]",
            c.qt == QLORA_QUANT_NF4 ? "nf4" : "fp4", c.bs, static_cast<long long>(c.rows), static_cast<long long>(c.cols));
        if (c.dq)
            expected_qs += ", \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": " +
                           qlora::json::python_float_repr(static_cast<double>(info.nested_offset));
        expected_qs += "}";
        EXPECT_EQ(std::string(static_cast<const char *>(qv.data), static_cast<size_t>(qv.cols)), expected_qs);

        // Read back: identical parts, identical dequantized values.
        qlora_q4_tensor_t r = nullptr;
        ASSERT_EQ(qlora_bnb_read_q4(ctx.get(), f.get(), prefix.c_str(), &r), QLORA_OK) << qlora_last_error();
        qtest::Q4 back(r);
        qlora_q4_info bi{};
        ASSERT_EQ(qlora_q4_get_info(back.get(), &bi), QLORA_OK);
        EXPECT_EQ(bi.rows, c.rows);
        EXPECT_EQ(bi.cols, c.cols);
        EXPECT_EQ(bi.quant_type, c.qt);
        EXPECT_EQ(bi.blocksize, c.bs);
        EXPECT_EQ(bi.double_quant, c.dq);
        EXPECT_EQ(bi.orig_dtype, QLORA_DTYPE_F32);
        EXPECT_EQ(std::memcmp(&bi.nested_offset, &info.nested_offset, 4), 0);
        qlora_q4_parts a{}, b{};
        ASSERT_EQ(qlora_q4_get_parts(q.get(), &a), QLORA_OK);
        ASSERT_EQ(qlora_q4_get_parts(back.get(), &b), QLORA_OK);
        EXPECT_EQ(0, std::memcmp(a.packed, b.packed, static_cast<size_t>(info.packed_bytes)));
        EXPECT_EQ(0, std::memcmp(a.code, b.code, 64));
        if (c.dq) {
            EXPECT_EQ(0, std::memcmp(a.qabsmax, b.qabsmax, static_cast<size_t>(nb)));
            EXPECT_EQ(0, std::memcmp(a.nested_absmax, b.nested_absmax, static_cast<size_t>(nnb) * 4));
            EXPECT_EQ(0, std::memcmp(a.nested_code, b.nested_code, 1024));
        } else {
            EXPECT_EQ(0, std::memcmp(a.absmax, b.absmax, static_cast<size_t>(nb) * 4));
        }
        const auto da = dequantize(ctx.get(), q.get(), c.rows, c.cols);
        const auto db = dequantize(ctx.get(), back.get(), c.rows, c.cols);
        EXPECT_EQ(0, std::memcmp(da.data(), db.data(), da.size() * 4));
    }
}

namespace {
// A valid bnb set built by hand (independent of qlora_bnb_add_q4): a 4 x 80
// NF4 weight, blocksize 32 (10 blocks), with or without double quantization,
// and a CUSTOM code table so that using the file's table is observable.
struct HandBuilt {
    static constexpr int64_t rows = 4, cols = 80, numel = rows * cols, bs = 32, nb = numel / bs;
    std::string P = "m.l.";
    RawSet      set;
    std::vector<uint8_t> packed;
    std::vector<float>   code, absmax, nested_code, nested_absmax;
    std::vector<uint8_t> qabsmax;
    float                offset = 0.25f;

    explicit HandBuilt(bool dq) {
        std::mt19937 rng(3);
        packed.resize(numel / 2);
        for (auto & b : packed) b = static_cast<uint8_t>(rng());
        for (int i = 0; i < 16; ++i) code.push_back(static_cast<float>(i - 7) / 9.0f); // not NF4
        std::string qs;
        if (dq) {
            qabsmax.resize(nb);
            for (auto & b : qabsmax) b = static_cast<uint8_t>(rng());
            for (int i = 0; i < 256; ++i) nested_code.push_back(static_cast<float>(i) / 255.0f);
            nested_absmax = {0.75f};
            qs = "{\"quant_type\": \"nf4\", \"blocksize\": 32, \"dtype\": \"float16\", \"shape\": [4, 80], "
                 "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 0.25}";
            set[P + "weight.absmax"] = {QLORA_DTYPE_U8, {nb}, Bytes(qabsmax.begin(), qabsmax.end())};
            set[P + "weight.nested_absmax"] = {QLORA_DTYPE_F32, {1}, bytes_of(nested_absmax.data(), 1)};
            set[P + "weight.nested_quant_map"] = {QLORA_DTYPE_F32, {256}, bytes_of(nested_code.data(), 256)};
        } else {
            for (int64_t b = 0; b < nb; ++b) absmax.push_back(0.5f + static_cast<float>(b));
            qs = "{\"quant_type\": \"nf4\", \"blocksize\": 32, \"dtype\": \"float16\", \"shape\": [4, 80]}";
            set[P + "weight.absmax"] = {QLORA_DTYPE_F32, {nb}, bytes_of(absmax.data(), nb)};
        }
        set[P + "weight"] = {QLORA_DTYPE_U8, {numel / 2, 1}, Bytes(packed.begin(), packed.end())};
        set[P + "weight.quant_map"] = {QLORA_DTYPE_F32, {16}, bytes_of(code.data(), 16)};
        set[P + "weight.quant_state.bitsandbytes__nf4"] = {QLORA_DTYPE_U8, {static_cast<int64_t>(qs.size())}, Bytes(qs.begin(), qs.end())};
    }
    // The dequantized value of element i, computed here from the file's parts.
    float expected(int64_t i) const {
        const uint8_t byte = packed[static_cast<size_t>(i / 2)];
        const int nib = (i % 2 == 0) ? byte >> 4 : byte & 0xf;
        const int64_t b = i / bs;
        float scale;
        if (!qabsmax.empty()) {
            const float s = nested_code[qabsmax[static_cast<size_t>(b)]] * nested_absmax[0];
            scale = s + offset;
        } else {
            scale = absmax[static_cast<size_t>(b)];
        }
        return code[static_cast<size_t>(nib)] * scale;
    }
};
} // namespace

TEST(IoBnb, ReadsHandBuiltCheckpointsWithTheFilesTables) {
    auto ctx = qtest::make_context(QLORA_BACKEND_REF);
    TempDir dir;
    for (bool dq : {false, true}) {
        HandBuilt h(dq);
        const std::string path = dir.file("hand.safetensors");
        write_raw(path, h.set);
        St f;
        ASSERT_EQ(open_st(path, f), QLORA_OK) << qlora_last_error();
        qlora_q4_tensor_t r = nullptr;
        ASSERT_EQ(qlora_bnb_read_q4(ctx.get(), f.get(), h.P.c_str(), &r), QLORA_OK) << qlora_last_error();
        qtest::Q4 q(r);
        qlora_q4_info info{};
        ASSERT_EQ(qlora_q4_get_info(q.get(), &info), QLORA_OK);
        EXPECT_EQ(info.orig_dtype, QLORA_DTYPE_F16);
        EXPECT_EQ(info.double_quant, dq ? 1 : 0);
        const auto out = dequantize(ctx.get(), q.get(), h.rows, h.cols);
        for (int64_t i = 0; i < h.numel; ++i) ASSERT_EQ(out[static_cast<size_t>(i)], h.expected(i)) << "element " << i;
    }
}

TEST(IoBnb, RejectsInconsistentCheckpointsNamingFileAndKey) {
    auto ctx = qtest::make_context(QLORA_BACKEND_REF);
    TempDir dir;
    const std::string path = dir.file("bad.safetensors");
    const std::string P = "m.l.";
    const std::string qs_key = P + "weight.quant_state.bitsandbytes__nf4";
    struct Mutation {
        const char * what;
        bool dq;
        std::function<void(RawSet &)> mutate;
        std::vector<std::string> fragments;
    };
    auto set_qs = [&](RawSet & s, const std::string & js) {
        s[qs_key] = {QLORA_DTYPE_U8, {static_cast<int64_t>(js.size())}, Bytes(js.begin(), js.end())};
    };
    const std::vector<Mutation> cases = {
        {"no quant state", false, [&](RawSet & s) { s.erase(qs_key); },
         {"no 4-bit weight under prefix 'm.l.': missing tensor 'm.l.weight.quant_state.bitsandbytes__nf4' (or its __fp4 variant)"}},
        {"both quant types", false, [&](RawSet & s) { s[P + "weight.quant_state.bitsandbytes__fp4"] = s[qs_key]; },
         {"both 'm.l.weight.quant_state.bitsandbytes__nf4' and 'm.l.weight.quant_state.bitsandbytes__fp4' exist"}},
        {"quant type disagrees with key", false,
         [&](RawSet & s) { set_qs(s, "{\"quant_type\": \"fp4\", \"blocksize\": 32, \"dtype\": \"float16\", \"shape\": [4, 80]}"); },
         {qs_key, "\"quant_type\" is \"fp4\" but the key says nf4"}},
        {"quant state not U8", false, [&](RawSet & s) { s[qs_key] = {QLORA_DTYPE_I8, {4}, Bytes{'{', '}', ' ', ' '}}; },
         {qs_key, "must be U8 with one dimension (UTF-8 JSON bytes), got I8 [4]"}},
        {"quant state not JSON", false, [&](RawSet & s) { set_qs(s, "{\"quant_type\": nf4}"); },
         {"'" + qs_key + "' is not valid JSON: line 1, column 16"}},
        {"missing weight", false, [&](RawSet & s) { s.erase(P + "weight"); },
         {"missing tensor 'm.l.weight' (the packed nibbles of the 4-bit weight under prefix 'm.l.')"}},
        {"weight wrong shape", false, [&](RawSet & s) { s[P + "weight"].shape = {1, 160}; },
         {"'m.l.weight' must be U8 [160, 1] for shape [4, 80], got U8 [1, 160]"}},
        {"weight wrong count", false, [&](RawSet & s) { s[P + "weight"] = {QLORA_DTYPE_U8, {161, 1}, Bytes(161, 0)}; },
         {"'m.l.weight' must be U8 [160, 1] for shape [4, 80], got U8 [161, 1]"}},
        {"weight wrong dtype", false, [&](RawSet & s) { s[P + "weight"] = {QLORA_DTYPE_BF16, {80, 1}, Bytes(160, 0)}; },
         {"'m.l.weight' must be U8 [160, 1]", "got BF16 [80, 1]"}},
        {"missing absmax", false, [&](RawSet & s) { s.erase(P + "weight.absmax"); },
         {"missing tensor 'm.l.weight.absmax' (the block scales"}},
        {"absmax count", false, [&](RawSet & s) { s[P + "weight.absmax"] = {QLORA_DTYPE_F32, {9}, Bytes(36, 0)}; },
         {"'m.l.weight.absmax' must be F32 [10] for shape [4, 80] with blocksize 32 without double quantization, got F32 [9]"}},
        {"U8 absmax without DQ", false, [&](RawSet & s) { s[P + "weight.absmax"] = {QLORA_DTYPE_U8, {10}, Bytes(10, 0)}; },
         {"'m.l.weight.absmax' must be F32 [10]", "without double quantization, got U8 [10]"}},
        {"F32 absmax with DQ", true, [&](RawSet & s) { s[P + "weight.absmax"] = {QLORA_DTYPE_F32, {10}, Bytes(40, 0)}; },
         {"'m.l.weight.absmax' must be U8 [10] for shape [4, 80] with blocksize 32 and double quantization, got F32 [10]"}},
        {"nested tensors without DQ", false,
         [&](RawSet & s) { s[P + "weight.nested_absmax"] = {QLORA_DTYPE_F32, {1}, Bytes(4, 0)}; },
         {"'m.l.weight.nested_absmax' exists but the quant state has no nested_* fields"}},
        {"missing nested_absmax", true, [&](RawSet & s) { s.erase(P + "weight.nested_absmax"); },
         {"missing tensor 'm.l.weight.nested_absmax' (the second-level scales"}},
        {"nested_absmax count", true, [&](RawSet & s) { s[P + "weight.nested_absmax"] = {QLORA_DTYPE_F32, {2}, Bytes(8, 0)}; },
         {"'m.l.weight.nested_absmax' must be F32 [1] for 10 blocks with nested_blocksize 256, got F32 [2]"}},
        {"nested_quant_map size", true,
         [&](RawSet & s) { s[P + "weight.nested_quant_map"] = {QLORA_DTYPE_F32, {255}, Bytes(1020, 0)}; },
         {"'m.l.weight.nested_quant_map' must be F32 [256], got F32 [255]"}},
        {"quant_map size", false, [&](RawSet & s) { s[P + "weight.quant_map"] = {QLORA_DTYPE_F32, {15}, Bytes(60, 0)}; },
         {"'m.l.weight.quant_map' must be F32 [16], got F32 [15]"}},
        {"quant_map dtype", false, [&](RawSet & s) { s[P + "weight.quant_map"] = {QLORA_DTYPE_F16, {16}, Bytes(32, 0)}; },
         {"'m.l.weight.quant_map' must be F32 [16], got F16 [16]"}},
        {"NaN in quant_map", false,
         [&](RawSet & s) { const float v = NAN; std::memcpy(s[P + "weight.quant_map"].bytes.data() + 12, &v, 4); },
         {"'m.l.weight.quant_map': element 3 is nan; scales and code tables must be finite"}},
        {"Inf in absmax", false,
         [&](RawSet & s) { const float v = INFINITY; std::memcpy(s[P + "weight.absmax"].bytes.data() + 4, &v, 4); },
         {"'m.l.weight.absmax': element 1 is inf"}},
        {"NaN in nested_absmax", true,
         [&](RawSet & s) { const float v = NAN; std::memcpy(s[P + "weight.nested_absmax"].bytes.data(), &v, 4); },
         {"'m.l.weight.nested_absmax': element 0 is nan"}},
        {"shape disagrees with the weight", false,
         [&](RawSet & s) { set_qs(s, "{\"quant_type\": \"nf4\", \"blocksize\": 32, \"dtype\": \"float16\", \"shape\": [5, 80]}"); },
         {"'m.l.weight' must be U8 [200, 1] for shape [5, 80], got U8 [160, 1]"}},
        {"blocksize disagrees with absmax", false,
         [&](RawSet & s) { set_qs(s, "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float16\", \"shape\": [4, 80]}"); },
         {"'m.l.weight.absmax' must be F32 [5] for shape [4, 80] with blocksize 64"}},
        {"DQ fields but plain tensors", false,
         [&](RawSet & s) {
             set_qs(s, "{\"quant_type\": \"nf4\", \"blocksize\": 32, \"dtype\": \"float16\", \"shape\": [4, 80], "
                       "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 0.25}");
         },
         {"'m.l.weight.absmax' must be U8 [10]", "and double quantization, got F32 [10]"}},
    };
    for (const auto & c : cases) {
        HandBuilt h(c.dq);
        c.mutate(h.set);
        write_raw(path, h.set);
        St f;
        ASSERT_EQ(open_st(path, f), QLORA_OK) << c.what << ": " << qlora_last_error();
        qlora_q4_tensor_t r = nullptr;
        std::vector<std::string> fr = c.fragments;
        fr.push_back(path);
        EXPECT_TRUE(failed_with(qlora_bnb_read_q4(ctx.get(), f.get(), P.c_str(), &r), QLORA_ERROR_FORMAT, fr)) << c.what;
        EXPECT_EQ(r, nullptr) << c.what;
    }
}

TEST(IoBnb, AddRejectsBadArgumentsAndDuplicateKeysAtomically) {
    auto ctx = qtest::make_context(QLORA_BACKEND_REF);
    const auto x = qtest::random_values(64 * 4, qtest::Dist::Normal, 1);
    auto q = quantize(ctx.get(), x, 4, 64, qlora_quant_default_params());
    Writer w = make_writer();
    const float one = 1.0f;
    const qlora_view v = host_view(&one, QLORA_DTYPE_F32, 1, 1);
    const int64_t n1 = 1;
    ASSERT_EQ(qlora_safetensors_writer_add(w.get(), "p.weight.quant_map", &v, 1, &n1, 0), QLORA_OK);
    EXPECT_TRUE(failed_with(qlora_bnb_add_q4(w.get(), "p.", q.get(), 0), QLORA_ERROR_INVALID_ARGUMENT,
                            {"a tensor named 'p.weight.quant_map' was already added"}));
    // Nothing of the failed add was kept: another prefix still works and the
    // file holds exactly the first tensor plus the new weight's six keys.
    ASSERT_EQ(qlora_bnb_add_q4(w.get(), "other.", q.get(), 0), QLORA_OK) << qlora_last_error();
    TempDir dir;
    const std::string path = dir.file("x.safetensors");
    ASSERT_EQ(qlora_safetensors_writer_write(w.get(), path.c_str()), QLORA_OK);
    St f;
    ASSERT_EQ(open_st(path, f), QLORA_OK);
    int64_t n = 0;
    ASSERT_EQ(qlora_safetensors_count(f.get(), &n), QLORA_OK);
    EXPECT_EQ(n, 7);
    EXPECT_TRUE(failed_with(qlora_bnb_add_q4(w.get(), "x.", nullptr, 0), QLORA_ERROR_INVALID_ARGUMENT,
                            {"tensor must not be NULL"}));
    EXPECT_TRUE(failed_with(qlora_bnb_add_q4(nullptr, "x.", q.get(), 0), QLORA_ERROR_INVALID_ARGUMENT,
                            {"writer must not be NULL"}));
    EXPECT_TRUE(failed_with(qlora_bnb_add_q4(w.get(), nullptr, q.get(), 0), QLORA_ERROR_INVALID_ARGUMENT,
                            {"prefix must not be NULL"}));
    qlora_q4_tensor_t r = nullptr;
    EXPECT_TRUE(failed_with(qlora_bnb_read_q4(nullptr, f.get(), "other.", &r), QLORA_ERROR_INVALID_ARGUMENT,
                            {"context must not be NULL"}));
}

TEST(IoBnb, RandomQuantStateMutationsGiveAStatus) {
    std::mt19937 rng(17);
    const std::string base = kGoldenDQ;
    int accepted = 0;
    for (int i = 0; i < 20000; ++i) {
        std::string s = base;
        const int edits = 1 + static_cast<int>(rng() % 3);
        for (int k = 0; k < edits; ++k) s[rng() % s.size()] = "{}[],:\"0123456789-e.nf4 "[rng() % 24];
        qlora_bnb_quant_state out{};
        const qlora_status st = parse_qs(s, &out);
        ASSERT_TRUE(st == QLORA_OK || st == QLORA_ERROR_FORMAT) << s;
        if (st == QLORA_OK) {
            ++accepted;
            ASSERT_TRUE(out.blocksize >= 32 && out.blocksize <= 4096);
            ASSERT_TRUE(out.rows >= 1 && out.cols >= 1);
        }
    }
    EXPECT_LT(accepted, 20000);
}

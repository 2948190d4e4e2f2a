// safetensors: reading hand-built files, every malformed-input case with its
// status and message, truncation at every byte, random mutations, sharded
// checkpoints, paging (release drops pages), and the atomic writer
// (golden header bytes, round trips, failures leave nothing behind).
#include "core/error.hpp"
#include "io/safetensors.hpp"
#include "io_test_util.hpp"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <random>
#include <sched.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace iotest;

namespace {

Bytes random_bytes(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    Bytes b(n);
    for (auto & x : b) x = static_cast<uint8_t>(rng());
    return b;
}

// A valid file with metadata and five tensors of different dtypes, whose
// header lists them out of data order (offsets are what count).
struct SmallFile {
    std::string header =
        "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"h\\u00e9\"},"
        "\"u8\":{\"dtype\":\"U8\",\"shape\":[2,2],\"data_offsets\":[34,38]},"
        "\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
        "\"scalar\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[24,32]},"
        "\"h\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[32,34]},"
        "\"empty\":{\"dtype\":\"F16\",\"shape\":[0,5],\"data_offsets\":[38,38]},"
        "\"flags\":{\"dtype\":\"BOOL\",\"shape\":[3],\"data_offsets\":[38,41]}}   ";
    Bytes data = random_bytes(41, 3);
    Bytes bytes() const { return st_bytes(header, data); }
};

struct BadCase {
    const char * what;
    std::string  header;
    size_t       data_bytes;
    std::vector<std::string> fragments;
};

std::string entry(const std::string & name, const std::string & dtype, const std::string & shape,
                  const std::string & offsets) {
    return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":" + offsets + "}";
}

} // namespace

TEST(IoSafetensors, ReadsAHandBuiltFile) {
    TempDir dir;
    SmallFile s;
    const std::string path = dir.file("small.safetensors");
    write_file(path, s.bytes());
    St f;
    ASSERT_EQ(open_st(path, f), QLORA_OK) << qlora_last_error();
    int64_t n = 0;
    ASSERT_EQ(qlora_safetensors_count(f.get(), &n), QLORA_OK);
    ASSERT_EQ(n, 6);
    // Data order: w, scalar, h, u8, empty, flags.
    const char * names[] = {"w", "scalar", "h", "u8", "empty", "flags"};
    const qlora_dtype dtypes[] = {QLORA_DTYPE_F32, QLORA_DTYPE_I64, QLORA_DTYPE_BF16, QLORA_DTYPE_U8, QLORA_DTYPE_F16,
                                  QLORA_DTYPE_BOOL};
    const int64_t begins[] = {0, 24, 32, 34, 38, 38}, sizes[] = {24, 8, 2, 4, 0, 3};
    const size_t data_start = 8 + s.header.size();
    for (int64_t i = 0; i < n; ++i) {
        qlora_safetensors_tensor t{};
        ASSERT_EQ(qlora_safetensors_info(f.get(), i, &t), QLORA_OK);
        EXPECT_STREQ(t.name, names[i]);
        EXPECT_EQ(t.path, path);
        EXPECT_EQ(t.dtype, dtypes[i]);
        EXPECT_EQ(t.nbytes, sizes[i]);
        EXPECT_EQ(t.file_offset, static_cast<int64_t>(data_start) + begins[i]);
        int64_t idx = -2;
        ASSERT_EQ(qlora_safetensors_find(f.get(), names[i], &idx), QLORA_OK);
        EXPECT_EQ(idx, i);
        qlora_view v{};
        ASSERT_EQ(qlora_safetensors_data(f.get(), i, &v), QLORA_OK);
        EXPECT_EQ(v.dtype, dtypes[i]);
        EXPECT_EQ(v.device, QLORA_DEVICE_HOST);
        EXPECT_EQ(v.rows * v.cols, t.numel);
        EXPECT_EQ(0, std::memcmp(v.data, s.data.data() + begins[i], static_cast<size_t>(sizes[i])));
    }
    qlora_safetensors_tensor w{};
    ASSERT_EQ(qlora_safetensors_info(f.get(), 0, &w), QLORA_OK);
    EXPECT_EQ(w.n_dims, 2);
    EXPECT_EQ(w.shape[0], 2);
    EXPECT_EQ(w.shape[1], 3);
    EXPECT_EQ(w.shape[2], 0);
    qlora_view v{};
    ASSERT_EQ(qlora_safetensors_data(f.get(), 0, &v), QLORA_OK);
    EXPECT_EQ(v.rows, 2);
    EXPECT_EQ(v.cols, 3);
    ASSERT_EQ(qlora_safetensors_data(f.get(), 1, &v), QLORA_OK); // scalar
    EXPECT_EQ(v.rows, 1);
    EXPECT_EQ(v.cols, 1);
    ASSERT_EQ(qlora_safetensors_data(f.get(), 4, &v), QLORA_OK); // [0, 5]
    EXPECT_EQ(v.rows * v.cols, 0);

    int64_t idx = 7;
    ASSERT_EQ(qlora_safetensors_find(f.get(), "nope", &idx), QLORA_OK);
    EXPECT_EQ(idx, -1);

    int64_t m = 0;
    ASSERT_EQ(qlora_safetensors_metadata_count(f.get(), &m), QLORA_OK);
    ASSERT_EQ(m, 2);
    const char *k = nullptr, *val = nullptr;
    ASSERT_EQ(qlora_safetensors_metadata_at(f.get(), 1, &k, &val), QLORA_OK);
    EXPECT_STREQ(k, "note");
    EXPECT_STREQ(val, "h\xc3\xa9");
    ASSERT_EQ(qlora_safetensors_metadata_get(f.get(), "format", &val), QLORA_OK);
    EXPECT_STREQ(val, "pt");
    ASSERT_EQ(qlora_safetensors_metadata_get(f.get(), "absent", &val), QLORA_OK);
    EXPECT_EQ(val, nullptr);

    // Bad arguments name themselves.
    EXPECT_TRUE(failed_with(qlora_safetensors_info(f.get(), 6, &w), QLORA_ERROR_INVALID_ARGUMENT,
                            {"index 6 is out of range", "has 6 tensors"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_data(nullptr, 0, &v), QLORA_ERROR_INVALID_ARGUMENT, {"file must not be NULL"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_find(f.get(), nullptr, &idx), QLORA_ERROR_INVALID_ARGUMENT,
                            {"name must not be NULL"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_metadata_at(f.get(), -1, &k, &val), QLORA_ERROR_INVALID_ARGUMENT,
                            {"index -1 is out of range"}));
}

TEST(IoSafetensors, ReadsEveryDtype) {
    const struct { const char * name; qlora_dtype dtype; size_t size; } dts[] = {
        {"BOOL", QLORA_DTYPE_BOOL, 1}, {"U8", QLORA_DTYPE_U8, 1},     {"I8", QLORA_DTYPE_I8, 1},
        {"F8_E5M2", QLORA_DTYPE_F8_E5M2, 1}, {"F8_E4M3", QLORA_DTYPE_F8_E4M3, 1}, {"I16", QLORA_DTYPE_I16, 2},
        {"U16", QLORA_DTYPE_U16, 2},   {"F16", QLORA_DTYPE_F16, 2},   {"BF16", QLORA_DTYPE_BF16, 2},
        {"I32", QLORA_DTYPE_I32, 4},   {"U32", QLORA_DTYPE_U32, 4},   {"F32", QLORA_DTYPE_F32, 4},
        {"F64", QLORA_DTYPE_F64, 8},   {"I64", QLORA_DTYPE_I64, 8},   {"U64", QLORA_DTYPE_U64, 8},
    };
    TempDir dir;
    for (const auto & d : dts) {
        const size_t nb = 3 * d.size;
        const std::string h = qlora::format("{\"t\":{\"dtype\":\"%s\",\"shape\":[3],\"data_offsets\":[0,%zu]}}", d.name, nb);
        const std::string path = dir.file(std::string(d.name) + ".safetensors");
        write_file(path, st_bytes(h, random_bytes(nb, 5)));
        St f;
        ASSERT_EQ(open_st(path, f), QLORA_OK) << qlora_last_error();
        qlora_safetensors_tensor t{};
        ASSERT_EQ(qlora_safetensors_info(f.get(), 0, &t), QLORA_OK);
        EXPECT_EQ(t.dtype, d.dtype) << d.name;
        EXPECT_EQ(qlora_dtype_size(t.dtype), d.size) << d.name;
        EXPECT_EQ(t.nbytes, static_cast<int64_t>(nb));
    }
}

TEST(IoSafetensors, RejectsMalformedHeadersWithFileAndKey) {
    const std::string E = entry("w", "F32", "[2,2]", "[0,16]");
    const std::vector<BadCase> cases = {
        {"not JSON", "{\"w\": nope}", 0, {"the header is not valid JSON: line 1, column 7: unexpected 'n'"}},
        {"empty header", "", 0, {"the header is not valid JSON: line 1, column 1: unexpected end of input"}},
        {"not an object", "[1,2]", 0, {"the header must be a JSON object, got an array"}},
        {"entry not an object", "{\"w\":[1]}", 0, {"tensor 'w': entry must be a JSON object", "got an array"}},
        {"missing dtype", "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, {"tensor 'w': missing \"dtype\""}},
        {"missing shape", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, {"tensor 'w': missing \"shape\""}},
        {"missing offsets", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, {"tensor 'w': missing \"data_offsets\""}},
        {"dtype not a string", "{\"w\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
         {"tensor 'w': \"dtype\" must be a string, got 32"}},
        {"unknown dtype", "{" + entry("w", "F4", "[2]", "[0,1]") + "}", 1, {"tensor 'w': unknown dtype 'F4'", "supported:"}},
        {"unknown dtype Q4", "{" + entry("x.y", "Q4_0", "[2]", "[0,1]") + "}", 1, {"tensor 'x.y': unknown dtype 'Q4_0'"}},
        {"negative dim", "{" + entry("w", "F32", "[-1,2]", "[0,8]") + "}", 8,
         {"tensor 'w': shape[0] is -1; dimensions must be non-negative integers"}},
        {"fractional dim", "{" + entry("w", "F32", "[2.0,2]", "[0,16]") + "}", 16, {"tensor 'w': shape[0] is 2.0"}},
        {"string dim", "{" + entry("w", "F32", "[2,\"2\"]", "[0,16]") + "}", 16, {"shape[1] is the string '2'"}},
        {"shape not an array", "{" + entry("w", "F32", "4", "[0,16]") + "}", 16, {"\"shape\" must be an array, got 4"}},
        {"too many dims", "{" + entry("w", "U8", "[1,1,1,1,1,1,1,1,1]", "[0,1]") + "}", 1,
         {"tensor 'w': shape has 9 dimensions; at most 8 are supported"}},
        {"element overflow", "{" + entry("w", "F32", "[4294967296,4294967296]", "[0,4]") + "}", 4,
         {"tensor 'w': shape [4294967296, 4294967296] has too many elements"}},
        {"three offsets", "{" + entry("w", "F32", "[1]", "[0,4,8]") + "}", 4,
         {"tensor 'w': \"data_offsets\" must be [begin, end] with two non-negative integers"}},
        {"negative offset", "{" + entry("w", "F32", "[1]", "[-4,0]") + "}", 4, {"\"data_offsets\" must be [begin, end]"}},
        {"reversed offsets", "{" + entry("w", "U8", "[0]", "[4,0]") + "}", 4,
         {"tensor 'w': data_offsets [4, 0] end before they begin"}},
        {"bytes disagree with dtype x shape", "{" + entry("w", "F32", "[2,3]", "[0,20]") + "}", 20,
         {"tensor 'w': dtype F32 with shape [2, 3] needs 24 bytes, but data_offsets [0, 20] hold 20"}},
        {"offsets beyond the data", "{" + E + "}", 12,
         {"tensor 'w': data_offsets [0, 16] go beyond the end of the data section (12 bytes)"}},
        {"overlap", "{" + E + "," + entry("b", "F32", "[2]", "[8,16]") + "}", 16,
         {"tensors 'w' [0, 16] and 'b' [8, 16] overlap"}},
        {"overlap with an empty tensor", "{" + E + "," + entry("e", "F32", "[0]", "[8,8]") + "}", 16, {"overlap"}},
        {"gap", "{" + entry("a", "F32", "[1]", "[0,4]") + "," + entry("b", "F32", "[1]", "[8,12]") + "}", 12,
         {"bytes [4, 8) of the data section belong to no tensor (before 'b')"}},
        {"trailing bytes", "{" + E + "}", 20, {"the data section is 20 bytes but the tensors cover only 16"}},
        {"data without tensors", "{}", 4, {"the data section is 4 bytes but the tensors cover only 0"}},
        {"duplicate name", "{" + E + "," + E + "}", 16, {"line 1, column 58: duplicate key 'w'"}},
        {"metadata not an object", "{\"__metadata__\":[]," + E + "}", 16,
         {"__metadata__ must be an object of strings, got an array"}},
        {"metadata value not a string", "{\"__metadata__\":{\"format\":1}," + E + "}", 16,
         {"__metadata__ 'format' must be a string, got 1"}},
        {"NUL in a metadata value", "{\"__metadata__\":{\"k\":\"a\\u0000b\"}}", 0,
         {"__metadata__ 'k' contains a NUL character"}},
        {"NUL in a name", "{" + entry("a\\u0000b", "U8", "[1]", "[0,1]") + "}", 1,
         {"tensor 'a\\x00b': the name contains a NUL character"}},
        {"invalid UTF-8 in a name", "{" + entry("a\xff", "U8", "[1]", "[0,1]") + "}", 1,
         {"the header is not valid JSON", "invalid UTF-8 byte 0xff"}},
        {"too deep", "{\"__metadata__\":{\"a\":[[[[[[[[1]]]]]]]]}}", 0, {"nesting deeper than 8 levels"}},
    };
    TempDir dir;
    for (const auto & c : cases) {
        const std::string path = dir.file("bad.safetensors");
        write_file(path, st_bytes(c.header, random_bytes(c.data_bytes, 9)));
        St f;
        std::vector<std::string> fr = c.fragments;
        fr.push_back(path);
        const qlora_status st = open_st(path, f);
        EXPECT_EQ(f.get(), nullptr) << c.what;
        EXPECT_TRUE(failed_with(st, QLORA_ERROR_FORMAT, fr)) << c.what;
    }
}

TEST(IoSafetensors, RejectsBadLengthsAndMissingFiles) {
    TempDir dir;
    const std::string path = dir.file("x.safetensors");
    St f;
    write_file(path, Bytes{1, 2, 3});
    EXPECT_TRUE(failed_with(open_st(path, f), QLORA_ERROR_FORMAT,
                            {path, "the file is 3 bytes; a safetensors file starts with an 8-byte header length"}));
    write_file(path, Bytes{});
    EXPECT_TRUE(failed_with(open_st(path, f), QLORA_ERROR_FORMAT, {"the file is 0 bytes"}));
    Bytes b;
    append_pod<uint64_t>(b, 1000);
    append(b, std::string("{}"));
    write_file(path, b);
    EXPECT_TRUE(failed_with(open_st(path, f), QLORA_ERROR_FORMAT,
                            {path, "header length 1000 goes beyond the end of the file (10 bytes)"}));
    b.clear();
    append_pod<uint64_t>(b, UINT64_MAX);
    write_file(path, b);
    EXPECT_TRUE(failed_with(open_st(path, f), QLORA_ERROR_FORMAT, {"header length 18446744073709551615 goes beyond"}));
    // A configurable header limit (the reference's is 100 MB).
    const std::string h = "{" + entry("w", "U8", "[4]", "[0,4]") + "}";
    write_file(path, st_bytes(h, Bytes(4, 7)));
    qlora_safetensors_params p = qlora_safetensors_default_params();
    EXPECT_EQ(p.max_header_bytes, 100000000);
    p.max_header_bytes = 16;
    EXPECT_TRUE(failed_with(open_st(path, f, p), QLORA_ERROR_FORMAT,
                            {path, "header length " + std::to_string(h.size()) + " exceeds the limit of 16 bytes"}));
    p.access = static_cast<qlora_access_hint>(9);
    EXPECT_TRUE(failed_with(open_st(path, f, p), QLORA_ERROR_INVALID_ARGUMENT, {"params->access", "got 9"}));

    EXPECT_TRUE(failed_with(open_st(dir.file("missing.safetensors"), f), QLORA_ERROR_IO,
                            {"cannot open '" + dir.file("missing.safetensors") + "': No such file or directory"}));
    EXPECT_TRUE(failed_with(open_st(dir.path(), f), QLORA_ERROR_IO, {"'" + dir.path() + "' is a directory"}));
    qlora_safetensors_t raw = nullptr;
    EXPECT_TRUE(failed_with(qlora_safetensors_open(nullptr, &p, &raw), QLORA_ERROR_INVALID_ARGUMENT, {"path must not be NULL"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_open(path.c_str(), nullptr, &raw), QLORA_ERROR_INVALID_ARGUMENT,
                            {"params must not be NULL"}));
}

TEST(IoSafetensors, TruncationAtEveryByteIsAFormatError) {
    TempDir dir;
    const Bytes full = SmallFile().bytes();
    const std::string path = dir.file("t.safetensors");
    for (size_t n = 0; n < full.size(); ++n) {
        write_file(path, Bytes(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n)));
        St f;
        const qlora_status st = open_st(path, f);
        ASSERT_EQ(st, QLORA_ERROR_FORMAT) << "truncated to " << n << " bytes: " << qlora_last_error();
        ASSERT_NE(std::string(qlora_last_error()).find(path), std::string::npos);
    }
    write_file(path, full);
    St f;
    EXPECT_EQ(open_st(path, f), QLORA_OK) << qlora_last_error();
}

TEST(IoSafetensors, RandomMutationsGiveAStatusNeverACrash) {
    // In memory, through the same parser the file API uses (a libFuzzer
    // target will call it the same way).
    const Bytes full = SmallFile().bytes();
    std::mt19937 rng(11);
    int ok = 0, rejected = 0;
    for (int i = 0; i < 30000; ++i) {
        Bytes b = full;
        const int edits = 1 + static_cast<int>(rng() % 3);
        for (int k = 0; k < edits; ++k) {
            const size_t at = rng() % b.size();
            switch (rng() % 3) {
                case 0: b[at] = static_cast<uint8_t>(rng()); break;
                case 1: b[at] = "{}[],:\"0123456789-e."[rng() % 20]; break;
                default: b.erase(b.begin() + static_cast<std::ptrdiff_t>(at)); break;
            }
        }
        try {
            const auto h = qlora::io::parse_safetensors(b.data(), b.size(), "mutant");
            // Whatever is accepted must be self-consistent.
            for (const auto & t : h.tensors) ASSERT_LE(h.data_start + t.end, b.size());
            ++ok;
        } catch (const qlora::Error & e) {
            ASSERT_EQ(e.status(), QLORA_ERROR_FORMAT) << e.what();
            ++rejected;
        }
    }
    EXPECT_GT(rejected, 0);
    std::printf("[          ] 30000 mutants: %d accepted, %d rejected with FORMAT\n", ok, rejected);
}

// ---------------------------------------------------------------------------
// Writer

TEST(IoSafetensors, WriterMatchesTheReferenceLayoutByteForByte) {
    // Added out of order; the reference (safetensors' Rust `prepare`) sorts by
    // dtype (widest first: I64, F32, BF16, I8, U8) then name, writes
    // __metadata__ first with no spaces, and pads the header with spaces to a
    // multiple of 8.
    const float b[2] = {1.5f, -2.0f};
    const uint8_t a[3] = {1, 2, 3};
    const int64_t c[1] = {-7};
    const uint16_t z[2] = {0x3f80, 0xc000};
    const int8_t m[1] = {-3};
    Writer w = make_writer();
    auto add = [&](const char * name, const void * p, qlora_dtype dt, int64_t n, std::vector<int64_t> shape) {
        const qlora_view v = host_view(p, dt, 1, n);
        ASSERT_EQ(qlora_safetensors_writer_add(w.get(), name, &v, static_cast<int32_t>(shape.size()),
                                               shape.empty() ? nullptr : shape.data(), 0),
                  QLORA_OK)
            << qlora_last_error();
    };
    add("b", b, QLORA_DTYPE_F32, 2, {2});
    add("a", a, QLORA_DTYPE_U8, 3, {3});
    add("z", z, QLORA_DTYPE_BF16, 2, {2, 1});
    add("m", m, QLORA_DTYPE_I8, 1, {});
    add("c", c, QLORA_DTYPE_I64, 1, {1});
    ASSERT_EQ(qlora_safetensors_writer_set_metadata(w.get(), "format", "pt"), QLORA_OK);
    ASSERT_EQ(qlora_safetensors_writer_set_metadata(w.get(), "a", "x"), QLORA_OK);
    TempDir dir;
    const std::string path = dir.file("golden.safetensors");
    ASSERT_EQ(qlora_safetensors_writer_write(w.get(), path.c_str()), QLORA_OK) << qlora_last_error();

    std::string header =
        "{\"__metadata__\":{\"a\":\"x\",\"format\":\"pt\"},"
        "\"c\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]},"
        "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
        "\"z\":{\"dtype\":\"BF16\",\"shape\":[2,1],\"data_offsets\":[16,20]},"
        "\"m\":{\"dtype\":\"I8\",\"shape\":[],\"data_offsets\":[20,21]},"
        "\"a\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[21,24]}}";
    header.append((8 - header.size() % 8) % 8, ' ');
    Bytes data;
    append(data, c, 8);
    append(data, b, 8);
    append(data, z, 4);
    append(data, m, 1);
    append(data, a, 3);
    EXPECT_EQ(read_file(path), st_bytes(header, data));
    EXPECT_EQ(dir.entries(), std::vector<std::string>{"golden.safetensors"}); // no temporary left
}

TEST(IoSafetensors, WriterRoundTripsEveryDtypeStridedAndBorrowedViews) {
    const qlora_dtype all[] = {QLORA_DTYPE_F32,  QLORA_DTYPE_F16,     QLORA_DTYPE_BF16,    QLORA_DTYPE_U8,
                               QLORA_DTYPE_I32,  QLORA_DTYPE_I64,     QLORA_DTYPE_F64,     QLORA_DTYPE_I8,
                               QLORA_DTYPE_I16,  QLORA_DTYPE_U16,     QLORA_DTYPE_U32,     QLORA_DTYPE_U64,
                               QLORA_DTYPE_BOOL, QLORA_DTYPE_F8_E4M3, QLORA_DTYPE_F8_E5M2};
    Writer w = make_writer();
    std::vector<Bytes> expected;
    std::vector<std::string> names;
    // A strided source: 5 rows of 7 elements, stride 9; borrowed for odd dtypes.
    std::vector<Bytes> sources;
    for (size_t k = 0; k < std::size(all); ++k) {
        const size_t es = qlora_dtype_size(all[k]);
        sources.push_back(random_bytes(5 * 9 * es, static_cast<uint32_t>(100 + k)));
        if (all[k] == QLORA_DTYPE_BOOL)
            for (auto & x : sources.back()) x &= 1;
        Bytes packed;
        for (int r = 0; r < 5; ++r) append(packed, sources.back().data() + r * 9 * es, 7 * es);
        expected.push_back(packed);
        names.push_back(qlora::format("t%zu.weight", k));
        const qlora_view v = host_view(sources.back().data(), all[k], 5, 7, 9);
        const int64_t shape[3] = {5, 7, 1};
        ASSERT_EQ(qlora_safetensors_writer_add(w.get(), names.back().c_str(), &v, 3, shape, static_cast<int32_t>(k % 2)),
                  QLORA_OK)
            << qlora_last_error();
    }
    ASSERT_EQ(qlora_safetensors_writer_set_metadata(w.get(), "format", "pt"), QLORA_OK);
    TempDir dir;
    const std::string path = dir.file("all.safetensors");
    ASSERT_EQ(qlora_safetensors_writer_write(w.get(), path.c_str()), QLORA_OK) << qlora_last_error();
    St f;
    ASSERT_EQ(open_st(path, f), QLORA_OK) << qlora_last_error();
    int64_t n = 0;
    ASSERT_EQ(qlora_safetensors_count(f.get(), &n), QLORA_OK);
    ASSERT_EQ(n, static_cast<int64_t>(std::size(all)));
    for (size_t k = 0; k < std::size(all); ++k) {
        int64_t idx = -1;
        ASSERT_EQ(qlora_safetensors_find(f.get(), names[k].c_str(), &idx), QLORA_OK);
        ASSERT_GE(idx, 0);
        qlora_safetensors_tensor t{};
        ASSERT_EQ(qlora_safetensors_info(f.get(), idx, &t), QLORA_OK);
        EXPECT_EQ(t.dtype, all[k]);
        EXPECT_EQ(t.n_dims, 3);
        EXPECT_EQ(t.shape[0], 5);
        EXPECT_EQ(t.shape[1], 7);
        EXPECT_EQ(t.shape[2], 1);
        EXPECT_EQ(t.file_offset % static_cast<int64_t>(qlora_dtype_size(all[k])), 0) << "aligned to the element size";
        qlora_view v{};
        ASSERT_EQ(qlora_safetensors_data(f.get(), idx, &v), QLORA_OK);
        EXPECT_EQ(0, std::memcmp(v.data, expected[k].data(), expected[k].size())) << names[k];
    }
    // Writing the same content twice gives the same bytes (deterministic).
    const std::string again = dir.file("again.safetensors");
    ASSERT_EQ(qlora_safetensors_writer_write(w.get(), again.c_str()), QLORA_OK);
    EXPECT_EQ(read_file(path), read_file(again));
}

TEST(IoSafetensors, WriterRejectsBadArguments) {
    Writer w = make_writer();
    const float x[4] = {1, 2, 3, 4};
    const qlora_view v = host_view(x, QLORA_DTYPE_F32, 2, 2);
    const int64_t s22[2] = {2, 2}, s3[1] = {3}, s0[2] = {0, 4};
    ASSERT_EQ(qlora_safetensors_writer_add(w.get(), "x", &v, 2, s22, 0), QLORA_OK);
    EXPECT_TRUE(failed_with(qlora_safetensors_writer_add(w.get(), "x", &v, 2, s22, 0), QLORA_ERROR_INVALID_ARGUMENT,
                            {"a tensor named 'x' was already added"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_writer_add(w.get(), "y", &v, 1, s3, 0), QLORA_ERROR_INVALID_ARGUMENT,
                            {"tensor 'y': shape [3] has 3 elements but data is [2, 2] = 4"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_writer_add(w.get(), "y", &v, 2, s0, 0), QLORA_ERROR_INVALID_ARGUMENT,
                            {"tensor 'y': shape[0] = 0 is invalid"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_writer_add(w.get(), "y", &v, 9, s22, 0), QLORA_ERROR_INVALID_ARGUMENT,
                            {"n_dims must be in [0, 8], got 9"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_writer_add(w.get(), "y", &v, 2, nullptr, 0), QLORA_ERROR_INVALID_ARGUMENT,
                            {"shape must not be NULL"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_writer_add(w.get(), "", &v, 2, s22, 0), QLORA_ERROR_INVALID_ARGUMENT,
                            {"name must not be empty"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_writer_add(w.get(), "__metadata__", &v, 2, s22, 0),
                            QLORA_ERROR_INVALID_ARGUMENT, {"\"__metadata__\" is reserved"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_writer_add(w.get(), "a\xff", &v, 2, s22, 0), QLORA_ERROR_INVALID_ARGUMENT,
                            {"name 'a\\xff' is not valid UTF-8"}));
    qlora_view bad = v;
    bad.dtype = static_cast<qlora_dtype>(77);
    EXPECT_TRUE(failed_with(qlora_safetensors_writer_add(w.get(), "y", &bad, 2, s22, 0), QLORA_ERROR_INVALID_ARGUMENT,
                            {"tensor 'y': data has unknown dtype 77"}));
    bad = v;
    bad.device = 0;
    EXPECT_TRUE(failed_with(qlora_safetensors_writer_add(w.get(), "y", &bad, 2, s22, 0), QLORA_ERROR_INVALID_ARGUMENT,
                            {"data is on device 0"}));
    bad = v;
    bad.stride = 1;
    EXPECT_TRUE(failed_with(qlora_safetensors_writer_add(w.get(), "y", &bad, 2, s22, 0), QLORA_ERROR_INVALID_ARGUMENT,
                            {"stride 1 smaller than its 2 columns"}));
    ASSERT_EQ(qlora_safetensors_writer_set_metadata(w.get(), "k", "v"), QLORA_OK);
    EXPECT_TRUE(failed_with(qlora_safetensors_writer_set_metadata(w.get(), "k", "w"), QLORA_ERROR_INVALID_ARGUMENT,
                            {"metadata key 'k' was already set"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_writer_set_metadata(w.get(), "j", "\xc3"), QLORA_ERROR_INVALID_ARGUMENT,
                            {"value '\\xc3' is not valid UTF-8"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_writer_write(w.get(), ""), QLORA_ERROR_INVALID_ARGUMENT,
                            {"output path must not be empty"}));
}

TEST(IoSafetensors, WriterFailuresLeaveNoPartialOutput) {
    TempDir dir;
    Writer w = make_writer();
    const Bytes big = random_bytes(1 << 20, 21);
    const qlora_view v = host_view(big.data(), QLORA_DTYPE_U8, 1, static_cast<int64_t>(big.size()));
    const int64_t shape[1] = {static_cast<int64_t>(big.size())};
    ASSERT_EQ(qlora_safetensors_writer_add(w.get(), "big", &v, 1, shape, 1), QLORA_OK);

    // A directory that does not exist.
    const std::string nodir = dir.file("no/such/dir/model.safetensors");
    EXPECT_TRUE(failed_with(qlora_safetensors_writer_write(w.get(), nodir.c_str()), QLORA_ERROR_IO,
                            {"cannot write '" + nodir + "'", "cannot create a file in '" + dir.file("no/such/dir") + "'",
                             "No such file or directory"}));
    // The path is a directory: the rename fails and the temporary is removed.
    fs::create_directory(dir.file("adir"));
    EXPECT_TRUE(failed_with(qlora_safetensors_writer_write(w.get(), dir.file("adir").c_str()), QLORA_ERROR_IO,
                            {"cannot write '" + dir.file("adir") + "'", "Is a directory"}));
    // A file size limit makes the write fail half way (EFBIG): the old file
    // at the path survives untouched and the temporary is gone.
    const std::string path = dir.file("model.safetensors");
    write_file(path, std::string("previous contents"));
    struct rlimit old{};
    ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
    auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = old;
    lim.rlim_cur = 64 * 1024;
    ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
    const qlora_status st = qlora_safetensors_writer_write(w.get(), path.c_str());
    const std::string msg = qlora_last_error();
    setrlimit(RLIMIT_FSIZE, &old);
    std::signal(SIGXFSZ, old_handler);
    EXPECT_EQ(st, QLORA_ERROR_IO) << msg;
    EXPECT_NE(msg.find("cannot write '" + path + "' (after"), std::string::npos) << msg;
    EXPECT_NE(msg.find("File too large"), std::string::npos) << msg;
    const Bytes prev = read_file(path);
    EXPECT_EQ(std::string(prev.begin(), prev.end()), "previous contents");
    auto names = dir.entries();
    std::sort(names.begin(), names.end());
    EXPECT_EQ(names, (std::vector<std::string>{"adir", "model.safetensors"}));
    // Without the limit the same writer replaces the file.
    ASSERT_EQ(qlora_safetensors_writer_write(w.get(), path.c_str()), QLORA_OK) << qlora_last_error();
    St f;
    ASSERT_EQ(open_st(path, f), QLORA_OK) << qlora_last_error();
}

TEST(IoSafetensors, DiskFullLeavesNoPartialOutput) {
    // A 256 KiB tmpfs in a private mount namespace (a child process, so the
    // mount vanishes with it). Needs root (CAP_SYS_ADMIN); skipped otherwise.
    TempDir dir;
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        if (unshare(CLONE_NEWNS) != 0 || mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
            mount("tmpfs", dir.path().c_str(), "tmpfs", 0, "size=256k") != 0)
            _exit(77);
        qlora_safetensors_writer_t w = nullptr;
        if (qlora_safetensors_writer_create(&w) != QLORA_OK) _exit(1);
        std::vector<uint8_t> big(1 << 20, 0x5a);
        const qlora_view v = host_view(big.data(), QLORA_DTYPE_U8, 1, static_cast<int64_t>(big.size()));
        const int64_t shape[1] = {static_cast<int64_t>(big.size())};
        if (qlora_safetensors_writer_add(w, "big", &v, 1, shape, 1) != QLORA_OK) _exit(2);
        const std::string path = dir.file("model.safetensors");
        const qlora_status st = qlora_safetensors_writer_write(w, path.c_str());
        const std::string msg = qlora_last_error();
        qlora_safetensors_writer_free(w);
        if (st != QLORA_ERROR_IO) _exit(3);
        if (msg.find("cannot write '" + path + "'") == std::string::npos) _exit(4);
        if (msg.find("No space left on device") == std::string::npos) _exit(5);
        if (!fs::is_empty(dir.path())) _exit(6);
        _exit(0);
    }
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    if (WEXITSTATUS(status) == 77) GTEST_SKIP() << "cannot mount a small tmpfs here (needs root): disk-full not simulated";
    EXPECT_EQ(WEXITSTATUS(status), 0) << "1-2: setup, 3: not an IO error, 4: message lacks the path, "
                                         "5: message lacks the errno text, 6: a file was left behind";
}

// ---------------------------------------------------------------------------
// Paging

namespace {
// Resident bytes of the mapping that contains `p` (from /proc/self/smaps).
int64_t resident_bytes_of_mapping(const void * p) {
    std::ifstream smaps("/proc/self/smaps");
    std::string line;
    bool inside = false;
    const auto addr = reinterpret_cast<uintptr_t>(p);
    while (std::getline(smaps, line)) {
        uintptr_t lo = 0, hi = 0;
        // Mapping lines start "lo-hi perms ..."; field lines "Name: value".
        if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2) {
            inside = addr >= lo && addr < hi;
            continue;
        }
        if (inside && line.rfind("Rss:", 0) == 0) return std::atoll(line.c_str() + 4) * 1024;
    }
    return -1;
}
} // namespace

TEST(IoSafetensors, ReleaseDropsATensorsPagesAndTheViewStaysValid) {
    TempDir dir;
    const int64_t n = 4 << 20; // 16 MiB of F32
    std::vector<float> x(static_cast<size_t>(n));
    std::mt19937 rng(5);
    for (auto & v : x) v = static_cast<float>(rng() % 1000) * 0.5f;
    double want = 0;
    for (float v : x) want += v;
    Writer w = make_writer();
    const qlora_view v = host_view(x.data(), QLORA_DTYPE_F32, 1, n);
    ASSERT_EQ(qlora_safetensors_writer_add(w.get(), "big", &v, 1, &n, 1), QLORA_OK);
    const std::string path = dir.file("big.safetensors");
    ASSERT_EQ(qlora_safetensors_writer_write(w.get(), path.c_str()), QLORA_OK) << qlora_last_error();

    qlora_safetensors_params p = qlora_safetensors_default_params();
    p.access = QLORA_ACCESS_SEQUENTIAL;
    St f;
    ASSERT_EQ(open_st(path, f, p), QLORA_OK) << qlora_last_error();
    qlora_view d{};
    ASSERT_EQ(qlora_safetensors_data(f.get(), 0, &d), QLORA_OK);
    const int64_t before = resident_bytes_of_mapping(d.data);
    ASSERT_GE(before, 0) << "mapping not found in /proc/self/smaps";
    EXPECT_LT(before, 4 << 20) << "opening must not read the data";
    ASSERT_EQ(qlora_safetensors_prefetch(f.get(), 0), QLORA_OK);
    auto sum = [&] {
        double s = 0;
        const float * q = static_cast<const float *>(d.data);
        for (int64_t i = 0; i < n; ++i) s += q[i];
        return s;
    };
    EXPECT_EQ(sum(), want);
    const int64_t touched = resident_bytes_of_mapping(d.data);
    EXPECT_GE(touched, 15 << 20);
    ASSERT_EQ(qlora_safetensors_release(f.get(), 0), QLORA_OK) << qlora_last_error();
    const int64_t released = resident_bytes_of_mapping(d.data);
    EXPECT_LT(released, 1 << 20) << "release must drop the pages";
    std::printf("[          ] resident: %lld KiB after open, %lld KiB after reading, %lld KiB after release\n",
                static_cast<long long>(before / 1024), static_cast<long long>(touched / 1024),
                static_cast<long long>(released / 1024));
    EXPECT_EQ(sum(), want) << "the view reads the file again after a release";
}

// ---------------------------------------------------------------------------
// Sharded checkpoints

namespace {
void write_shard(const std::string & path, const std::vector<std::string> & names, uint32_t seed,
                 const char * format = "pt") {
    Writer w = make_writer();
    std::vector<std::vector<float>> keep;
    for (size_t k = 0; k < names.size(); ++k) {
        keep.emplace_back(6);
        std::mt19937 rng(seed + static_cast<uint32_t>(k));
        for (auto & v : keep.back()) v = static_cast<float>(rng() % 100);
        const qlora_view v = host_view(keep.back().data(), QLORA_DTYPE_F32, 2, 3);
        const int64_t shape[2] = {2, 3};
        ASSERT_EQ(qlora_safetensors_writer_add(w.get(), names[k].c_str(), &v, 2, shape, 0), QLORA_OK);
    }
    ASSERT_EQ(qlora_safetensors_writer_set_metadata(w.get(), "format", format), QLORA_OK);
    ASSERT_EQ(qlora_safetensors_writer_write(w.get(), path.c_str()), QLORA_OK) << qlora_last_error();
}

qlora_status open_index(const std::string & path, St & out) {
    qlora_safetensors_params p = qlora_safetensors_default_params();
    qlora_safetensors_t f = nullptr;
    const qlora_status st = qlora_safetensors_open_index(path.c_str(), &p, &f);
    out.reset(f);
    return st;
}
} // namespace

TEST(IoSafetensors, OpensAShardedCheckpointAsOneSet) {
    TempDir dir;
    write_shard(dir.file("model-00001-of-00002.safetensors"), {"a", "b"}, 1);
    write_shard(dir.file("model-00002-of-00002.safetensors"), {"c"}, 2);
    const std::string index = dir.file("model.safetensors.index.json");
    write_file(index, std::string("{\"metadata\": {\"total_size\": 72}, \"weight_map\": {"
                                  "\"c\": \"model-00002-of-00002.safetensors\", "
                                  "\"a\": \"model-00001-of-00002.safetensors\", "
                                  "\"b\": \"model-00001-of-00002.safetensors\"}}"));
    St f;
    ASSERT_EQ(open_index(index, f), QLORA_OK) << qlora_last_error();
    int64_t n = 0;
    ASSERT_EQ(qlora_safetensors_count(f.get(), &n), QLORA_OK);
    ASSERT_EQ(n, 3);
    const struct { const char * name; const char * shard; uint32_t seed; } want[] = {
        {"a", "model-00001-of-00002.safetensors", 1}, {"b", "model-00001-of-00002.safetensors", 2},
        {"c", "model-00002-of-00002.safetensors", 2}};
    for (const auto & w : want) {
        int64_t idx = -1;
        ASSERT_EQ(qlora_safetensors_find(f.get(), w.name, &idx), QLORA_OK);
        ASSERT_GE(idx, 0) << w.name;
        qlora_safetensors_tensor t{};
        ASSERT_EQ(qlora_safetensors_info(f.get(), idx, &t), QLORA_OK);
        EXPECT_EQ(std::string(t.path), dir.file(w.shard));
        qlora_view v{};
        ASSERT_EQ(qlora_safetensors_data(f.get(), idx, &v), QLORA_OK);
        std::mt19937 rng(w.seed);
        for (int i = 0; i < 6; ++i) EXPECT_EQ(static_cast<const float *>(v.data)[i], static_cast<float>(rng() % 100));
        EXPECT_EQ(qlora_safetensors_release(f.get(), idx), QLORA_OK);
    }
    const char * fmt = nullptr;
    ASSERT_EQ(qlora_safetensors_metadata_get(f.get(), "format", &fmt), QLORA_OK);
    EXPECT_STREQ(fmt, "pt");
}

TEST(IoSafetensors, ShardedIndexAndShardsMustAgree) {
    TempDir dir;
    write_shard(dir.file("s1.safetensors"), {"a", "b"}, 1);
    write_shard(dir.file("s2.safetensors"), {"c"}, 2);
    write_shard(dir.file("s3.safetensors"), {"a"}, 3);
    write_shard(dir.file("np.safetensors"), {"d"}, 4, "np");
    const std::string index = dir.file("model.safetensors.index.json");
    const struct { const char * what; std::string json; qlora_status status; std::vector<std::string> fragments; } cases[] = {
        {"empty file", "", QLORA_ERROR_FORMAT, {index, "not valid JSON: line 1, column 1: unexpected end of input"}},
        {"not JSON", "{\"weight_map\": {", QLORA_ERROR_FORMAT, {index, "not valid JSON: line 1, column 17: unexpected end of input"}},
        {"no weight_map", "{\"metadata\": {}}", QLORA_ERROR_FORMAT, {index, "missing \"weight_map\""}},
        {"weight_map not an object", "{\"weight_map\": []}", QLORA_ERROR_FORMAT, {"\"weight_map\" must be an object, got an array"}},
        {"empty weight_map", "{\"weight_map\": {}}", QLORA_ERROR_FORMAT, {"\"weight_map\" is empty"}},
        {"shard not a string", "{\"weight_map\": {\"a\": 1}}", QLORA_ERROR_FORMAT, {"weight_map['a'] must be a file name string, got 1"}},
        {"path escape", "{\"weight_map\": {\"a\": \"../s1.safetensors\"}}", QLORA_ERROR_FORMAT,
         {"weight_map['a'] = '../s1.safetensors' is not a plain file name in the index's directory"}},
        {"absolute path", "{\"weight_map\": {\"a\": \"/etc/passwd\"}}", QLORA_ERROR_FORMAT, {"is not a plain file name"}},
        {"missing shard file", "{\"weight_map\": {\"a\": \"gone.safetensors\"}}", QLORA_ERROR_IO,
         {"cannot open '" + dir.file("gone.safetensors") + "': No such file or directory"}},
        {"listed tensor absent", "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s1.safetensors\", \"z\": \"s1.safetensors\"}}",
         QLORA_ERROR_FORMAT, {"weight_map lists tensor 'z' in s1.safetensors, but that file has no such tensor"}},
        {"unlisted tensor", "{\"weight_map\": {\"a\": \"s1.safetensors\"}}", QLORA_ERROR_FORMAT,
         {dir.file("s1.safetensors"), "tensor 'b' is not listed in the weight_map of " + index}},
        {"wrong shard", "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s1.safetensors\", \"c\": \"s1.safetensors\"}}",
         QLORA_ERROR_FORMAT, {"weight_map lists tensor 'c' in s1.safetensors"}},
        {"tensor in two shards", "{\"weight_map\": {\"a\": \"s3.safetensors\", \"b\": \"s1.safetensors\"}}",
         QLORA_ERROR_FORMAT, {"tensor 'a' is in s1.safetensors, but the weight_map says s3.safetensors"}},
        {"metadata conflict", "{\"weight_map\": {\"d\": \"np.safetensors\", \"c\": \"s2.safetensors\"}}", QLORA_ERROR_FORMAT,
         {"__metadata__ 'format' is 'pt', but", "np.safetensors has 'np'"}},
        {"metadata not an object", "{\"metadata\": 3, \"weight_map\": {\"c\": \"s2.safetensors\"}}", QLORA_ERROR_FORMAT,
         {"\"metadata\" must be an object, got 3"}},
    };
    for (const auto & c : cases) {
        write_file(index, c.json);
        St f;
        EXPECT_TRUE(failed_with(open_index(index, f), c.status, c.fragments)) << c.what;
        EXPECT_EQ(f.get(), nullptr);
    }
    St f;
    EXPECT_TRUE(failed_with(open_index(dir.file("none.json"), f), QLORA_ERROR_IO, {"none.json", "No such file"}));
}

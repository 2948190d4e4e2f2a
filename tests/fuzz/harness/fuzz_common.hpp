// Shared pieces of the fuzz harnesses (tests/fuzz/harness/h_*.cpp).
//
// A harness is a function `int qfuzz_<target>(const uint8_t * data, size_t size)`
// that feeds one input to the library and checks the ABI contract on every
// call it makes. It is linked twice:
//  - into a libFuzzer binary (tests/fuzz/fuzz_main.cpp, preset linux-x64-fuzz),
//    where a broken contract aborts so that libFuzzer keeps the input;
//  - into the GoogleTest suite (tests/native/test_fuzz_replay.cpp), which
//    replays every committed corpus and regression input through it and turns
//    a broken contract into a test failure.
#pragma once

#include "qlora.h"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>

namespace qfuzz {

// ---- contract violations ------------------------------------------------

// Called for a broken contract. Default: print to stderr and abort() (the
// fuzzer's crash). The GTest replay installs one that throws.
using FailureHandler = void (*)(const std::string & message);
void set_failure_handler(FailureHandler handler);
void report(const char * file, int line, const std::string & message);

std::string strprintf(const char * fmt, ...) __attribute__((format(printf, 1, 2)));

#define QFUZZ_CHECK(cond, ...)                                                                            \
    do {                                                                                                  \
        if (!(cond)) ::qfuzz::report(__FILE__, __LINE__, std::string("check failed: " #cond ": ") +      \
                                                             ::qfuzz::strprintf(__VA_ARGS__));           \
    } while (0)

// Checks the status contract of one call and returns the status:
//  - a value of the qlora_status enum, never QLORA_ERROR_INTERNAL (a bug);
//  - QLORA_OK exactly when qlora_last_error() is "";
//  - a failure's message starts with the name of the function that failed
//    (`call`, e.g. "qlora_safetensors_open") followed by ": " and text;
//  - when `allowed` is not empty, a failure is one of those statuses.
qlora_status check_status(qlora_status st, const char * call, std::initializer_list<qlora_status> allowed = {});

// ---- reading the fuzz input ---------------------------------------------

// Takes values from the front of the input; past its end every value is 0.
class Bytes {
public:
    Bytes(const uint8_t * data, size_t size) : p_(data), n_(size) {}
    size_t left() const { return n_ - i_; }
    bool   empty() const { return i_ >= n_; }
    uint8_t  u8();
    uint16_t u16();
    uint32_t u32();
    uint64_t u64();
    int32_t  i32() { return static_cast<int32_t>(u32()); }
    int64_t  i64() { return static_cast<int64_t>(u64()); }
    float    f32();
    // A value in [0, n) (n >= 1).
    uint32_t below(uint32_t n) { return n <= 1 ? 0 : u32() % n; }
    bool     flag() { return (u8() & 1) != 0; }
    // Up to `max` bytes (a length byte, then the bytes).
    std::string str(size_t max);
    // Everything that is left.
    std::vector<uint8_t> rest();

private:
    const uint8_t * p_;
    size_t          n_, i_ = 0;
};

// ---- files --------------------------------------------------------------

// A private directory for this process under /dev/shm (tmpfs: no disk I/O, so
// fsync is free) or $TMPDIR, created on first use and removed at exit.
const std::string & scratch_dir();

// `bytes` as a file: written to a fresh path in scratch_dir(), removed when
// the object dies.
class TempFile {
public:
    TempFile(const void * data, size_t size, const char * suffix = "");
    explicit TempFile(const std::vector<uint8_t> & b, const char * suffix = "") : TempFile(b.data(), b.size(), suffix) {}
    ~TempFile();
    TempFile(const TempFile &) = delete;
    TempFile & operator=(const TempFile &) = delete;
    const std::string & path() const { return path_; }

private:
    std::string path_;
};

// A fresh path in scratch_dir() (nothing created); unlinked by the destructor.
class TempPath {
public:
    explicit TempPath(const char * suffix = "");
    ~TempPath();
    TempPath(const TempPath &) = delete;
    TempPath & operator=(const TempPath &) = delete;
    const std::string & path() const { return path_; }

private:
    std::string path_;
};

std::vector<uint8_t> read_whole_file(const std::string & path);
// Entries of a directory (names), for "no temporary file left behind" checks.
std::vector<std::string> list_dir(const std::string & path);

// Reads every byte of [p, p + n) (a fault or a sanitizer report if any is not
// readable) and returns a value that depends on all of them.
uint64_t touch(const void * p, size_t n);

// ---- the harnesses ------------------------------------------------------

int qfuzz_json(const uint8_t * data, size_t size);
int qfuzz_safetensors(const uint8_t * data, size_t size);
int qfuzz_safetensors_index(const uint8_t * data, size_t size);
int qfuzz_bnb_quant_state(const uint8_t * data, size_t size);
int qfuzz_llama2c_model(const uint8_t * data, size_t size);
int qfuzz_llama2c_tokenizer(const uint8_t * data, size_t size);
int qfuzz_adamw_load(const uint8_t * data, size_t size);
int qfuzz_pager_spill(const uint8_t * data, size_t size);
int qfuzz_abi(const uint8_t * data, size_t size);

struct Target {
    const char * name;
    int (*run)(const uint8_t *, size_t);
};
// Every harness, by the name of its corpus folder (tests/fuzz/corpus/<name>).
const std::vector<Target> & targets();

} // namespace qfuzz

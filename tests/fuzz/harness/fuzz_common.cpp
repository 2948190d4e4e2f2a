#include "fuzz_common.hpp"

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <system_error>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace qfuzz {

namespace {
FailureHandler g_handler = nullptr;
} // namespace

void set_failure_handler(FailureHandler handler) { g_handler = handler; }

std::string strprintf(const char * fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    va_list ap2;
    va_copy(ap2, ap);
    const int n = std::vsnprintf(nullptr, 0, fmt, ap);
    va_end(ap);
    std::string s(n > 0 ? static_cast<size_t>(n) : 0, '\0');
    if (n > 0) std::vsnprintf(s.data(), s.size() + 1, fmt, ap2);
    va_end(ap2);
    return s;
}

void report(const char * file, int line, const std::string & message) {
    const std::string full = strprintf("%s:%d: %s", file, line, message.c_str());
    if (g_handler) {
        g_handler(full);
        return;
    }
    std::fprintf(stderr, "qlora fuzz harness: contract violated\n  %s\n", full.c_str());
    std::fflush(stderr);
    std::abort();
}

qlora_status check_status(qlora_status st, const char * call, std::initializer_list<qlora_status> allowed) {
    int32_t raw;
    std::memcpy(&raw, &st, sizeof raw);
    const std::string msg = qlora_last_error();
    QFUZZ_CHECK(raw >= QLORA_OK && raw <= QLORA_ERROR_INTERNAL, "%s returned %d, not a qlora_status (message: %s)", call,
                raw, msg.c_str());
    QFUZZ_CHECK(raw != QLORA_ERROR_INTERNAL, "%s returned QLORA_ERROR_INTERNAL (a bug): %s", call, msg.c_str());
    if (raw == QLORA_OK) {
        QFUZZ_CHECK(msg.empty(), "%s returned QLORA_OK but qlora_last_error() is \"%s\"", call, msg.c_str());
        return st;
    }
    const std::string prefix = std::string(call) + ": ";
    QFUZZ_CHECK(msg.size() > prefix.size() && msg.compare(0, prefix.size(), prefix) == 0,
                "%s returned %s with the message \"%s\"; expected \"%s<what went wrong>\"", call,
                qlora_status_string(st), msg.c_str(), prefix.c_str());
    if (allowed.size() > 0) {
        bool ok = false;
        for (qlora_status a : allowed) ok = ok || a == raw;
        QFUZZ_CHECK(ok, "%s returned %s, which this input cannot cause: %s", call, qlora_status_string(st),
                    msg.c_str());
    }
    return st;
}

// ---------------------------------------------------------------------------

uint8_t Bytes::u8() { return i_ < n_ ? p_[i_++] : 0; }
uint16_t Bytes::u16() { return static_cast<uint16_t>(u8() | (u8() << 8)); }
uint32_t Bytes::u32() { return static_cast<uint32_t>(u16()) | (static_cast<uint32_t>(u16()) << 16); }
uint64_t Bytes::u64() { return static_cast<uint64_t>(u32()) | (static_cast<uint64_t>(u32()) << 32); }
float Bytes::f32() {
    const uint32_t b = u32();
    float f;
    std::memcpy(&f, &b, 4);
    return f;
}
std::string Bytes::str(size_t max) {
    const size_t n = std::min<size_t>(u8() % (max + 1), left());
    std::string s(reinterpret_cast<const char *>(p_ + i_), n);
    i_ += n;
    return s;
}
std::vector<uint8_t> Bytes::rest() {
    std::vector<uint8_t> v(p_ + i_, p_ + n_);
    i_ = n_;
    return v;
}

// ---------------------------------------------------------------------------

namespace {

std::string make_scratch_dir() {
    std::string base = "/dev/shm";
    struct stat st{};
    if (stat(base.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || access(base.c_str(), W_OK) != 0) {
        const char * t = std::getenv("TMPDIR");
        base = t && *t ? t : "/tmp";
    }
    std::string tmpl = base + "/qlora-fuzz-XXXXXX";
    if (!mkdtemp(tmpl.data())) {
        std::fprintf(stderr, "qlora fuzz harness: cannot create a directory under %s\n", base.c_str());
        std::abort();
    }
    return tmpl;
}

std::string g_dir;
std::atomic<uint64_t> g_counter{0};

void remove_scratch() {
    std::error_code ec;
    if (!g_dir.empty()) std::filesystem::remove_all(g_dir, ec);
}

std::string fresh_path(const char * suffix) {
    return scratch_dir() + "/f" + std::to_string(g_counter.fetch_add(1)) + suffix;
}

} // namespace

const std::string & scratch_dir() {
    static std::once_flag once;
    std::call_once(once, [] {
        g_dir = make_scratch_dir();
        std::atexit(remove_scratch);
    });
    return g_dir;
}

TempFile::TempFile(const void * data, size_t size, const char * suffix) : path_(fresh_path(suffix)) {
    const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    QFUZZ_CHECK(fd >= 0, "cannot create %s", path_.c_str());
    const auto * p = static_cast<const uint8_t *>(data);
    while (size > 0) {
        const ssize_t w = ::write(fd, p, size);
        if (w <= 0) break;
        p += w;
        size -= static_cast<size_t>(w);
    }
    ::close(fd);
    QFUZZ_CHECK(size == 0, "cannot write %s", path_.c_str());
}

TempFile::~TempFile() { ::unlink(path_.c_str()); }

TempPath::TempPath(const char * suffix) : path_(fresh_path(suffix)) {}
TempPath::~TempPath() { ::unlink(path_.c_str()); }

std::vector<uint8_t> read_whole_file(const std::string & path) {
    std::ifstream f(path, std::ios::binary);
    return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

std::vector<std::string> list_dir(const std::string & path) {
    std::vector<std::string> out;
    if (DIR * d = opendir(path.c_str())) {
        while (const dirent * e = readdir(d)) {
            const std::string n = e->d_name;
            if (n != "." && n != "..") out.push_back(n);
        }
        closedir(d);
    }
    return out;
}

uint64_t touch(const void * p, size_t n) {
    const auto * b = static_cast<const volatile uint8_t *>(p);
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

const std::vector<Target> & targets() {
    static const std::vector<Target> t = {
        {"json", qfuzz_json},
        {"safetensors", qfuzz_safetensors},
        {"safetensors_index", qfuzz_safetensors_index},
        {"bnb_quant_state", qfuzz_bnb_quant_state},
        {"llama2c_model", qfuzz_llama2c_model},
        {"llama2c_tokenizer", qfuzz_llama2c_tokenizer},
        {"adamw_load", qfuzz_adamw_load},
        {"pager_spill", qfuzz_pager_spill},
        {"abi", qfuzz_abi},
    };
    return t;
}

} // namespace qfuzz

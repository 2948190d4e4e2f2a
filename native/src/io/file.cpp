#include "io/file.hpp"

#include "core/error.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace qlora::io {

namespace {

// GNU strerror_r returns char*, XSI returns int: accept both.
[[maybe_unused]] const char * strerror_result(const char * r, const char *) { return r; }
[[maybe_unused]] const char * strerror_result(int r, const char * buf) { return r == 0 ? buf : "unknown error"; }

uint64_t page_size() {
    static const uint64_t p = [] {
        const long v = sysconf(_SC_PAGESIZE);
        return v > 0 ? static_cast<uint64_t>(v) : uint64_t{4096};
    }();
    return p;
}

int advice_of(qlora_access_hint hint) {
    switch (hint) {
        case QLORA_ACCESS_SEQUENTIAL: return MADV_SEQUENTIAL;
        case QLORA_ACCESS_RANDOM: return MADV_RANDOM;
        default: return MADV_NORMAL;
    }
}

} // namespace

std::string errno_text(int err) {
    char buf[256];
    buf[0] = '\0';
    return strerror_result(strerror_r(err, buf, sizeof(buf)), buf);
}

std::string dir_name(const std::string & path) {
    const size_t slash = path.find_last_of('/');
    if (slash == std::string::npos) return ".";
    if (slash == 0) return "/";
    return path.substr(0, slash);
}

std::string base_name(const std::string & path) {
    const size_t slash = path.find_last_of('/');
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

// ---------------------------------------------------------------------------

MappedFile::MappedFile(const std::string & path) : path_(path) {
    int fd;
    do { fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC); } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        const int e = errno;
        fail(QLORA_ERROR_IO, "cannot open '%s': %s", path.c_str(), errno_text(e).c_str());
    }
    fd_ = fd;
    struct stat st{};
    if (fstat(fd_, &st) != 0) {
        const int e = errno;
        close();
        fail(QLORA_ERROR_IO, "cannot stat '%s': %s", path.c_str(), errno_text(e).c_str());
    }
    if (S_ISDIR(st.st_mode)) {
        close();
        fail(QLORA_ERROR_IO, "'%s' is a directory, not a file", path.c_str());
    }
    if (!S_ISREG(st.st_mode)) {
        close();
        fail(QLORA_ERROR_IO, "'%s' is not a regular file", path.c_str());
    }
    size_ = static_cast<uint64_t>(st.st_size);
    if (size_ == 0) return; // mmap of 0 bytes is an error; an empty file is a format question
    void * p = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
    if (p == MAP_FAILED) {
        const int e = errno;
        close();
        fail(e == ENOMEM ? QLORA_ERROR_OUT_OF_MEMORY : QLORA_ERROR_IO, "cannot map '%s' (%llu bytes): %s",
             path.c_str(), static_cast<unsigned long long>(size_), errno_text(e).c_str());
    }
    data_ = static_cast<uint8_t *>(p);
}

MappedFile::~MappedFile() { close(); }

MappedFile::MappedFile(MappedFile && o) noexcept
    : path_(std::move(o.path_)), fd_(o.fd_), data_(o.data_), size_(o.size_) {
    o.fd_ = -1;
    o.data_ = nullptr;
    o.size_ = 0;
}

MappedFile & MappedFile::operator=(MappedFile && o) noexcept {
    if (this != &o) {
        close();
        path_ = std::move(o.path_);
        fd_ = o.fd_;
        data_ = o.data_;
        size_ = o.size_;
        o.fd_ = -1;
        o.data_ = nullptr;
        o.size_ = 0;
    }
    return *this;
}

void MappedFile::close() noexcept {
    if (data_) munmap(data_, size_);
    if (fd_ >= 0) ::close(fd_);
    data_ = nullptr;
    fd_ = -1;
}

void MappedFile::advise_all(qlora_access_hint hint) const {
    if (!data_) return;
    if (madvise(data_, size_, advice_of(hint)) != 0) {
        const int e = errno;
        fail(QLORA_ERROR_IO, "madvise on '%s' failed: %s", path_.c_str(), errno_text(e).c_str());
    }
}

void MappedFile::prefetch(uint64_t offset, uint64_t n) const {
    if (!data_ || n == 0 || offset >= size_) return;
    const uint64_t ps = page_size();
    const uint64_t lo = offset / ps * ps;
    const uint64_t hi = std::min(size_, offset + n);
    if (madvise(data_ + lo, hi - lo, MADV_WILLNEED) != 0) {
        const int e = errno;
        fail(QLORA_ERROR_IO, "madvise(WILLNEED) on '%s' failed: %s", path_.c_str(), errno_text(e).c_str());
    }
}

void MappedFile::release(uint64_t offset, uint64_t n) const {
    if (!data_ || n == 0 || offset >= size_) return;
    const uint64_t ps = page_size();
    const uint64_t lo = offset / ps * ps;
    const uint64_t hi = std::min(size_, offset + n);
    // The mapping is MAP_PRIVATE and never written, so dropping its pages
    // loses nothing: a later access faults the file's bytes back in.
    if (madvise(data_ + lo, hi - lo, MADV_DONTNEED) != 0) {
        const int e = errno;
        fail(QLORA_ERROR_IO, "madvise(DONTNEED) on '%s' failed: %s", path_.c_str(), errno_text(e).c_str());
    }
    // Only a hint to the page cache; its failure changes nothing we rely on.
    (void)posix_fadvise(fd_, static_cast<off_t>(lo), static_cast<off_t>(hi - lo), POSIX_FADV_DONTNEED);
}

// ---------------------------------------------------------------------------

std::string read_small_file(const std::string & path, uint64_t max_bytes, const char * what) {
    MappedFile f(path);
    if (f.size() > max_bytes)
        fail(QLORA_ERROR_FORMAT, "%s: %s is %llu bytes; the limit is %llu", path.c_str(), what,
             static_cast<unsigned long long>(f.size()), static_cast<unsigned long long>(max_bytes));
    if (f.size() == 0) return std::string();
    return std::string(reinterpret_cast<const char *>(f.data()), static_cast<size_t>(f.size()));
}

// ---------------------------------------------------------------------------

AtomicFile::AtomicFile(const std::string & path) : path_(path) {
    if (path.empty()) fail(QLORA_ERROR_INVALID_ARGUMENT, "output path must not be empty");
    if (path.back() == '/') fail(QLORA_ERROR_IO, "cannot write '%s': the path names a directory", path.c_str());
    dir_ = dir_name(path);
    static std::atomic<uint64_t> counter{0};
    for (int attempt = 0;; ++attempt) {
        temp_ = dir_ + "/." + base_name(path) + ".tmp." + std::to_string(getpid()) + "." +
                std::to_string(counter.fetch_add(1));
        int fd;
        do {
            fd = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        } while (fd < 0 && errno == EINTR);
        if (fd >= 0) {
            fd_ = fd;
            return;
        }
        const int e = errno;
        if (e == EEXIST && attempt < 100) continue;
        fail(QLORA_ERROR_IO, "cannot write '%s': cannot create a file in '%s': %s", path.c_str(), dir_.c_str(),
             errno_text(e).c_str());
    }
}

AtomicFile::~AtomicFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(temp_.c_str());
}

void AtomicFile::write(const void * data, size_t n) {
    const auto * p = static_cast<const uint8_t *>(data);
    while (n > 0) {
        const size_t chunk = std::min<size_t>(n, size_t{1} << 30);
        const ssize_t w = ::write(fd_, p, chunk);
        if (w < 0) {
            const int e = errno;
            if (e == EINTR) continue;
            fail(QLORA_ERROR_IO, "cannot write '%s' (after %llu bytes): %s", path_.c_str(),
                 static_cast<unsigned long long>(written_), errno_text(e).c_str());
        }
        if (w == 0)
            fail(QLORA_ERROR_IO, "cannot write '%s' (after %llu bytes): the write made no progress", path_.c_str(),
                 static_cast<unsigned long long>(written_));
        p += w;
        n -= static_cast<size_t>(w);
        written_ += static_cast<uint64_t>(w);
    }
}

void AtomicFile::commit() {
    if (fsync(fd_) != 0) {
        const int e = errno;
        fail(QLORA_ERROR_IO, "cannot write '%s': fsync failed: %s", path_.c_str(), errno_text(e).c_str());
    }
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) {
        const int e = errno;
        fail(QLORA_ERROR_IO, "cannot write '%s': close failed: %s", path_.c_str(), errno_text(e).c_str());
    }
    if (::rename(temp_.c_str(), path_.c_str()) != 0) {
        const int e = errno;
        fail(QLORA_ERROR_IO, "cannot write '%s': rename from '%s' failed: %s", path_.c_str(), temp_.c_str(),
             errno_text(e).c_str());
    }
    committed_ = true;
    // Make the rename itself durable. Some file systems cannot fsync a
    // directory; the file is complete either way, so this is best effort.
    const int dfd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        ::close(dfd);
    }
}

} // namespace qlora::io

// Files: read-only memory maps (with paging hints) and atomic writes.
// POSIX only for now (Linux, macOS); errors are qlora::Error with
// QLORA_ERROR_IO and a message holding the path and the errno text.
#pragma once

#include "core/error.hpp"
#include "qlora.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace qlora::io {

// strerror_r text of an errno value.
std::string errno_text(int err);

// A whole file mapped read-only (PROT_READ, MAP_PRIVATE). Nothing is read
// until touched, so a file larger than RAM can be used piece by piece.
class MappedFile {
public:
    MappedFile() = default;
    explicit MappedFile(const std::string & path);
    ~MappedFile();
    MappedFile(MappedFile && other) noexcept;
    MappedFile & operator=(MappedFile && other) noexcept;
    MappedFile(const MappedFile &) = delete;
    MappedFile & operator=(const MappedFile &) = delete;

    const uint8_t *     data() const { return data_; }
    uint64_t            size() const { return size_; }
    const std::string & path() const { return path_; }

    // madvise over the whole mapping (QLORA_ACCESS_*).
    void advise_all(qlora_access_hint hint) const;
    // Starts reading [offset, offset + n) ahead of use (MADV_WILLNEED).
    void prefetch(uint64_t offset, uint64_t n) const;
    // Drops [offset, offset + n) from this process (MADV_DONTNEED, rounded out
    // to whole pages, which is harmless: the mapping is never written, so a
    // later touch reads the same bytes back from the file) and tells the
    // kernel the page cache may drop it too (POSIX_FADV_DONTNEED).
    void release(uint64_t offset, uint64_t n) const;

private:
    void close() noexcept;
    std::string path_;
    int         fd_ = -1;
    uint8_t *   data_ = nullptr;
    uint64_t    size_ = 0;
};

// Reads a whole (small) file into memory; IO error naming the path on
// failure, FORMAT error if it is larger than `max_bytes`.
std::string read_small_file(const std::string & path, uint64_t max_bytes, const char * what);

// Writes a file atomically: the bytes go to a new temporary file in the same
// directory, which is fsync'ed and renamed over `path` by commit(). If the
// writer is destroyed before commit() (an error, an exception), the
// temporary file is removed and `path` is untouched.
class AtomicFile {
public:
    explicit AtomicFile(const std::string & path);
    ~AtomicFile();
    AtomicFile(const AtomicFile &) = delete;
    AtomicFile & operator=(const AtomicFile &) = delete;

    void write(const void * data, size_t n);
    void commit();
    const std::string & temp_path() const { return temp_; }
    uint64_t            written() const { return written_; }

private:
    std::string path_, temp_, dir_;
    int         fd_ = -1;
    uint64_t    written_ = 0;
    bool        committed_ = false;
};

// The directory part of a path ("." for a bare file name) and the last part.
std::string dir_name(const std::string & path);
std::string base_name(const std::string & path);

} // namespace qlora::io

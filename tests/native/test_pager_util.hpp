// Helpers shared by the pager and optimizer tests and benchmarks.
#pragma once

#include "qlora.h"

#include <atomic>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>

#include <unistd.h>

namespace qtest {

struct PagerDeleter { void operator()(qlora_pager_t p) const { qlora_pager_free(p); } };
struct AdamwDeleter { void operator()(qlora_adamw_t o) const { qlora_adamw_free(o); } };
using PagerPtr = std::unique_ptr<qlora_pager, PagerDeleter>;
using AdamwPtr = std::unique_ptr<qlora_adamw, AdamwDeleter>;

// A fresh directory under the system temp dir, removed at scope exit.
struct TempDir {
    std::filesystem::path path;
    TempDir() {
        static std::atomic<int> counter{0};
        path = std::filesystem::temp_directory_path() /
               ("qlora-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
        std::filesystem::remove_all(path);
        std::filesystem::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    TempDir(const TempDir &) = delete;
    TempDir & operator=(const TempDir &) = delete;
};

} // namespace qtest

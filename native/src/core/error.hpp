// Errors inside the core: thrown as qlora::Error, turned into a qlora_status
// at the ABI boundary by qlora::guard (exactly one place).
#pragma once

#include "qlora.h"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <type_traits>
#include <string>
#include <utility>

namespace qlora {

class Error : public std::exception {
public:
    Error(qlora_status status, std::string message) : status_(status), message_(std::move(message)) {}
    qlora_status status() const noexcept { return status_; }
    const char * what() const noexcept override { return message_.c_str(); }

private:
    qlora_status status_;
    std::string  message_;
};

// printf-style formatting into a std::string.
template <typename... Args>
std::string format(const char * fmt, Args... args) {
    if constexpr (sizeof...(Args) == 0) {
        return std::string(fmt);
    } else {
        int n = std::snprintf(nullptr, 0, fmt, args...);
        if (n <= 0) return std::string(fmt);
        std::string s(static_cast<size_t>(n), '\0');
        std::snprintf(s.data(), s.size() + 1, fmt, args...);
        return s;
    }
}

template <typename... Args>
[[noreturn]] void fail(qlora_status status, const char * fmt, Args... args) {
    throw Error(status, format(fmt, args...));
}

// The integer stored in a C enum that came through the ABI. Callers (C, C#)
// may pass any int, and reading an out-of-range value as the C++ enum type is
// undefined behaviour (UBSan: "load of value N, which is not a valid value"),
// so exported functions copy the bytes and validate the int instead.
template <typename E>
int32_t raw_enum(const E & e) {
    static_assert(sizeof(E) == sizeof(int32_t), "C enums crossing the ABI are 32-bit");
    int32_t v;
    std::memcpy(&v, &e, sizeof v);
    return v;
}

void set_last_error(const std::string & message);
void clear_last_error();

// Runs `body` (returning void or qlora_status) and converts every exception
// into a status plus a thread-local message. Nothing escapes.
template <typename F>
qlora_status guard(const char * fn, F && body) noexcept {
    try {
        clear_last_error();
        if constexpr (std::is_same_v<decltype(body()), void>) {
            body();
            return QLORA_OK;
        } else {
            return body();
        }
    } catch (const Error & e) {
        set_last_error(std::string(fn) + ": " + e.what());
        return e.status();
    } catch (const std::bad_alloc &) {
        set_last_error(std::string(fn) + ": out of host memory");
        return QLORA_ERROR_OUT_OF_MEMORY;
    } catch (const std::exception & e) {
        set_last_error(std::string(fn) + ": internal error: " + e.what());
        return QLORA_ERROR_INTERNAL;
    } catch (...) {
        set_last_error(std::string(fn) + ": internal error: unknown exception");
        return QLORA_ERROR_INTERNAL;
    }
}

} // namespace qlora

// Argument checks: QLORA_CHECK_ARG(n > 0, "n must be positive, got %lld", (long long)n)
#define QLORA_CHECK_ARG(cond, ...) \
    do { if (!(cond)) ::qlora::fail(QLORA_ERROR_INVALID_ARGUMENT, __VA_ARGS__); } while (0)
#define QLORA_CHECK_NOT_NULL(ptr) \
    QLORA_CHECK_ARG((ptr) != nullptr, "%s must not be NULL", #ptr)
// Wraps an exported function body: return QLORA_GUARD({ ... });
#define QLORA_GUARD(...) ::qlora::guard(__func__, [&]() __VA_ARGS__)

// A small, strict JSON parser and serializer for file headers (safetensors,
// bitsandbytes quant state, sharded-checkpoint indexes).
//
// Strict means RFC 8259 and nothing more: no comments, no trailing commas, no
// NaN/Infinity, no leading zeros, no control characters inside strings, no
// byte-order mark, no duplicate object keys, and every string (after escape
// processing) valid UTF-8 without lone surrogates. Input size, nesting depth
// and the number of values are limited, so a hostile header cannot exhaust
// the stack or the heap. Errors are qlora::Error(QLORA_ERROR_FORMAT) with a
// message "line L, column C: what" (1-based; columns count UTF-8 characters).
//
// Numbers keep both readings: `integral` is true when the token had no
// fraction or exponent and fits int64 (then `integer` is exact); `number` is
// the correctly rounded double of the token in every case.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qlora::json {

struct Limits {
    size_t max_bytes = 100'000'000; // the safetensors reference implementation's header limit
    int    max_depth = 64;
    size_t max_values = size_t{1} << 21;
};

class Value {
public:
    enum class Kind : uint8_t { Null, Bool, Number, String, Array, Object };
    using Member = std::pair<std::string, Value>;

    Kind        kind = Kind::Null;
    bool        boolean = false;
    bool        integral = false; // number token without fraction/exponent that fits int64
    int64_t     integer = 0;
    double      number = 0.0;
    std::string text;             // String: decoded UTF-8
    std::vector<Value>  items;    // Array
    std::vector<Member> members;  // Object, in document order
    uint32_t    line = 0, column = 0; // where the value starts (0 for built values)

    bool is_null() const { return kind == Kind::Null; }
    bool is_bool() const { return kind == Kind::Bool; }
    bool is_number() const { return kind == Kind::Number; }
    bool is_string() const { return kind == Kind::String; }
    bool is_array() const { return kind == Kind::Array; }
    bool is_object() const { return kind == Kind::Object; }

    // Member lookup in an object (nullptr if absent or not an object).
    const Value * find(std::string_view key) const;

    // Builders for serialization.
    // A user-provided default constructor (defined in json.cpp) keeps
    // std::pair<std::string, Value> from needing Value's implicit one while
    // Value is still incomplete (clang with libstdc++ rejects that).
    Value();

    static Value null() { return Value{}; }
    static Value of_bool(bool b);
    static Value of_int(int64_t i);
    static Value of_double(double d);
    static Value of_string(std::string s);
    static Value array();
    static Value object();
    Value & push(Value v);                    // append to an array
    Value & add(std::string key, Value v);    // append to an object (caller keeps keys unique)
};

// "null", "boolean", "number", "string", "array", "object".
const char * kind_name(Value::Kind kind);

// Parses exactly one JSON value (surrounding whitespace allowed).
Value parse(std::string_view text, const Limits & limits = Limits{});

// Output styles. Compact: what serde_json (the safetensors reference
// implementation) writes: no spaces, UTF-8 as is. Python: what Python's
// json.dumps writes by default: ", " and ": " separators, ensure_ascii
// (every non-ASCII character and DEL as \uXXXX, surrogate pairs above U+FFFF).
struct Style {
    const char * item_separator;
    const char * key_separator;
    bool         ensure_ascii;
};
inline constexpr Style kCompact{",", ":", false};
inline constexpr Style kPython{", ", ": ", true};

// Serializes `v`. Non-integral numbers are written as Python's repr(float)
// writes them (shortest round-trip digits); a non-finite number is an
// INVALID_ARGUMENT error. Strings must be valid UTF-8.
void write(const Value & v, std::string & out, const Style & style);
std::string to_string(const Value & v, const Style & style);

// Python's repr() of a float: the shortest digits that round-trip, in
// positional form for 1e-4 <= |v| < 1e16 ("0.0001", "1234.5", "3.0"), else
// exponent form ("1e-05", "1.5e+16"); "-0.0" for negative zero.
std::string python_float_repr(double v);

// True if `s` is valid UTF-8 (no overlong forms, surrogates or values above
// U+10FFFF). On failure *bad_offset is the offset of the first bad byte.
bool valid_utf8(std::string_view s, size_t * bad_offset = nullptr);

// A string quoted for an error message: printable ASCII kept, everything else
// escaped, cut to `max_len` characters with "...".
std::string quote_for_message(std::string_view s, size_t max_len = 80);

} // namespace qlora::json

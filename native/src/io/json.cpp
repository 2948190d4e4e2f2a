#include "io/json.hpp"

#include "core/error.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <system_error>

namespace qlora::json {

// ---------------------------------------------------------------------------
// UTF-8

namespace {

// Length of the UTF-8 sequence starting at s[i] if it is well formed, else 0.
size_t utf8_sequence(const unsigned char * s, size_t n, size_t i) {
    const unsigned char c = s[i];
    if (c < 0x80) return 1;
    auto cont = [&](size_t k, unsigned char lo = 0x80, unsigned char hi = 0xBF) {
        return i + k < n && s[i + k] >= lo && s[i + k] <= hi;
    };
    if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
    if (c == 0xE0) return cont(1, 0xA0) && cont(2) ? 3 : 0;
    if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) return cont(1) && cont(2) ? 3 : 0;
    if (c == 0xED) return cont(1, 0x80, 0x9F) && cont(2) ? 3 : 0; // no surrogates
    if (c == 0xF0) return cont(1, 0x90) && cont(2) && cont(3) ? 4 : 0;
    if (c >= 0xF1 && c <= 0xF3) return cont(1) && cont(2) && cont(3) ? 4 : 0;
    if (c == 0xF4) return cont(1, 0x80, 0x8F) && cont(2) && cont(3) ? 4 : 0;
    return 0;
}

void append_utf8(std::string & out, uint32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

uint32_t decode_utf8(const unsigned char * s, size_t len) {
    switch (len) {
        case 1: return s[0];
        case 2: return (uint32_t(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
        case 3: return (uint32_t(s[0] & 0x0F) << 12) | (uint32_t(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        default:
            return (uint32_t(s[0] & 0x07) << 18) | (uint32_t(s[1] & 0x3F) << 12) | (uint32_t(s[2] & 0x3F) << 6) |
                   (s[3] & 0x3F);
    }
}

} // namespace

bool valid_utf8(std::string_view s, size_t * bad_offset) {
    const auto * p = reinterpret_cast<const unsigned char *>(s.data());
    for (size_t i = 0; i < s.size();) {
        const size_t len = utf8_sequence(p, s.size(), i);
        if (len == 0) {
            if (bad_offset) *bad_offset = i;
            return false;
        }
        i += len;
    }
    return true;
}

std::string quote_for_message(std::string_view s, size_t max_len) {
    std::string out = "'";
    size_t shown = 0;
    for (unsigned char c : s) {
        if (shown == max_len) { out += "..."; break; }
        if (c >= 0x20 && c < 0x7F && c != '\\' && c != '\'') out += static_cast<char>(c);
        else out += format("\\x%02x", static_cast<unsigned>(c));
        ++shown;
    }
    out += "'";
    return out;
}

// ---------------------------------------------------------------------------
// Values

const char * kind_name(Value::Kind kind) {
    switch (kind) {
        case Value::Kind::Null: return "null";
        case Value::Kind::Bool: return "boolean";
        case Value::Kind::Number: return "number";
        case Value::Kind::String: return "string";
        case Value::Kind::Array: return "array";
        case Value::Kind::Object: return "object";
    }
    return "unknown";
}

Value::Value() = default;

const Value * Value::find(std::string_view key) const {
    if (kind != Kind::Object) return nullptr;
    for (const auto & m : members)
        if (m.first == key) return &m.second;
    return nullptr;
}

Value Value::of_bool(bool b) { Value v; v.kind = Kind::Bool; v.boolean = b; return v; }
Value Value::of_int(int64_t i) {
    Value v;
    v.kind = Kind::Number;
    v.integral = true;
    v.integer = i;
    v.number = static_cast<double>(i);
    return v;
}
Value Value::of_double(double d) { Value v; v.kind = Kind::Number; v.number = d; return v; }
Value Value::of_string(std::string s) { Value v; v.kind = Kind::String; v.text = std::move(s); return v; }
Value Value::array() { Value v; v.kind = Kind::Array; return v; }
Value Value::object() { Value v; v.kind = Kind::Object; return v; }
Value & Value::push(Value v) { items.push_back(std::move(v)); return items.back(); }
Value & Value::add(std::string key, Value v) {
    members.emplace_back(std::move(key), std::move(v));
    return members.back().second;
}

// ---------------------------------------------------------------------------
// Parser

namespace {

class Parser {
public:
    Parser(std::string_view text, const Limits & limits)
        : p_(reinterpret_cast<const unsigned char *>(text.data())), n_(text.size()), limits_(limits) {}

    Value run() {
        if (n_ > limits_.max_bytes)
            error_at(1, 1, format("input is %zu bytes; the limit is %zu", n_, limits_.max_bytes));
        skip_ws();
        Value v = parse_value(0);
        skip_ws();
        if (i_ < n_) error("unexpected content after the JSON value: " + describe_here());
        return v;
    }

private:
    const unsigned char * p_;
    size_t                n_;
    const Limits &        limits_;
    size_t                i_ = 0;
    uint32_t              line_ = 1, col_ = 1;
    size_t                values_ = 0;

    [[noreturn]] void error_at(uint32_t line, uint32_t col, const std::string & what) const {
        fail(QLORA_ERROR_FORMAT, "line %u, column %u: %s", line, col, what.c_str());
    }
    [[noreturn]] void error(const std::string & what) const { error_at(line_, col_, what); }

    std::string describe_here() const {
        if (i_ >= n_) return "end of input";
        const unsigned char c = p_[i_];
        if (c >= 0x20 && c < 0x7F) return format("'%c'", c);
        return format("byte 0x%02x", static_cast<unsigned>(c));
    }

    // Advances over one byte that is not a newline and not a UTF-8 continuation.
    void advance(size_t bytes = 1) {
        for (size_t k = 0; k < bytes; ++k) {
            if ((p_[i_] & 0xC0) != 0x80) ++col_;
            ++i_;
        }
    }

    void skip_ws() {
        while (i_ < n_) {
            const unsigned char c = p_[i_];
            if (c == '\n') { ++i_; ++line_; col_ = 1; }
            else if (c == ' ' || c == '\t' || c == '\r') { ++i_; ++col_; }
            else break;
        }
    }

    Value start_value(Value::Kind kind) {
        if (++values_ > limits_.max_values)
            error(format("more than %zu JSON values; the document is too large", limits_.max_values));
        Value v;
        v.kind = kind;
        v.line = line_;
        v.column = col_;
        return v;
    }

    Value parse_value(int depth) {
        if (i_ >= n_) error("unexpected end of input; expected a value");
        switch (p_[i_]) {
            case '{': return parse_object(depth + 1);
            case '[': return parse_array(depth + 1);
            case '"': {
                Value v = start_value(Value::Kind::String);
                v.text = parse_string();
                return v;
            }
            case 't': return parse_literal("true", Value::Kind::Bool, true);
            case 'f': return parse_literal("false", Value::Kind::Bool, false);
            case 'n': return parse_literal("null", Value::Kind::Null, false);
            default:
                if (p_[i_] == '-' || (p_[i_] >= '0' && p_[i_] <= '9')) return parse_number();
                error("unexpected " + describe_here() + "; expected a value");
        }
    }

    Value parse_literal(const char * word, Value::Kind kind, bool b) {
        Value v = start_value(kind);
        const size_t len = std::strlen(word);
        if (n_ - i_ < len || std::memcmp(p_ + i_, word, len) != 0)
            error("unexpected " + describe_here() + "; expected a value");
        advance(len);
        v.boolean = b;
        return v;
    }

    void check_depth(int depth) {
        if (depth > limits_.max_depth) error(format("nesting deeper than %d levels", limits_.max_depth));
    }

    Value parse_array(int depth) {
        check_depth(depth);
        Value v = start_value(Value::Kind::Array);
        advance(); // [
        skip_ws();
        if (i_ < n_ && p_[i_] == ']') { advance(); return v; }
        for (;;) {
            skip_ws();
            if (i_ < n_ && p_[i_] == ']') error("trailing comma before ']'");
            v.items.push_back(parse_value(depth));
            skip_ws();
            if (i_ >= n_) error("unexpected end of input; expected ',' or ']' in an array");
            if (p_[i_] == ',') { advance(); continue; }
            if (p_[i_] == ']') { advance(); return v; }
            error("unexpected " + describe_here() + "; expected ',' or ']' in an array");
        }
    }

    Value parse_object(int depth) {
        check_depth(depth);
        Value v = start_value(Value::Kind::Object);
        advance(); // {
        skip_ws();
        std::vector<std::pair<uint32_t, uint32_t>> key_pos;
        if (i_ < n_ && p_[i_] == '}') { advance(); return v; }
        for (;;) {
            skip_ws();
            if (i_ >= n_) error("unexpected end of input; expected a string key");
            if (p_[i_] == '}') error("trailing comma before '}'");
            if (p_[i_] != '"') error("unexpected " + describe_here() + "; expected a string key");
            key_pos.emplace_back(line_, col_);
            std::string key = parse_string();
            skip_ws();
            if (i_ >= n_ || p_[i_] != ':') error("unexpected " + describe_here() + "; expected ':' after an object key");
            advance();
            skip_ws();
            v.members.emplace_back(std::move(key), parse_value(depth));
            skip_ws();
            if (i_ >= n_) error("unexpected end of input; expected ',' or '}' in an object");
            if (p_[i_] == ',') { advance(); continue; }
            if (p_[i_] == '}') { advance(); break; }
            error("unexpected " + describe_here() + "; expected ',' or '}' in an object");
        }
        check_duplicates(v, key_pos);
        return v;
    }

    // O(n log n): sort member indices by key, report the later of the first
    // equal pair found (by document position).
    void check_duplicates(const Value & v, const std::vector<std::pair<uint32_t, uint32_t>> & pos) const {
        const size_t n = v.members.size();
        if (n < 2) return;
        std::vector<uint32_t> idx(n);
        for (size_t k = 0; k < n; ++k) idx[k] = static_cast<uint32_t>(k);
        std::stable_sort(idx.begin(), idx.end(),
                         [&](uint32_t a, uint32_t b) { return v.members[a].first < v.members[b].first; });
        size_t best = n;
        for (size_t k = 1; k < n; ++k)
            if (v.members[idx[k]].first == v.members[idx[k - 1]].first) best = std::min<size_t>(best, idx[k]);
        if (best < n)
            error_at(pos[best].first, pos[best].second,
                     "duplicate key " + quote_for_message(v.members[best].first));
    }

    unsigned hex4() {
        unsigned cp = 0;
        for (int k = 0; k < 4; ++k) {
            if (i_ >= n_) error("unexpected end of input in a \\u escape");
            const unsigned char c = p_[i_];
            unsigned d;
            if (c >= '0' && c <= '9') d = c - '0';
            else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
            else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
            else error("invalid \\u escape: " + describe_here() + " is not a hex digit");
            cp = cp * 16 + d;
            advance();
        }
        return cp;
    }

    std::string parse_string() {
        advance(); // opening quote
        std::string out;
        for (;;) {
            if (i_ >= n_) error("unexpected end of input inside a string");
            const unsigned char c = p_[i_];
            if (c == '"') { advance(); return out; }
            if (c < 0x20) error(format("control character U+%04X in a string must be escaped", c));
            if (c == '\\') {
                const uint32_t esc_line = line_, esc_col = col_;
                advance();
                if (i_ >= n_) error("unexpected end of input inside a string");
                const unsigned char e = p_[i_];
                switch (e) {
                    case '"': out += '"'; advance(); break;
                    case '\\': out += '\\'; advance(); break;
                    case '/': out += '/'; advance(); break;
                    case 'b': out += '\b'; advance(); break;
                    case 'f': out += '\f'; advance(); break;
                    case 'n': out += '\n'; advance(); break;
                    case 'r': out += '\r'; advance(); break;
                    case 't': out += '\t'; advance(); break;
                    case 'u': {
                        advance();
                        uint32_t cp = hex4();
                        if (cp >= 0xDC00 && cp <= 0xDFFF)
                            error_at(esc_line, esc_col, format("lone low surrogate \\u%04X", cp));
                        if (cp >= 0xD800 && cp <= 0xDBFF) {
                            if (n_ - i_ < 2 || p_[i_] != '\\' || p_[i_ + 1] != 'u')
                                error_at(esc_line, esc_col,
                                         format("high surrogate \\u%04X is not followed by a low surrogate", cp));
                            advance(2);
                            const uint32_t lo = hex4();
                            if (lo < 0xDC00 || lo > 0xDFFF)
                                error_at(esc_line, esc_col,
                                         format("high surrogate \\u%04X is followed by \\u%04X, not a low surrogate",
                                                cp, lo));
                            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        }
                        append_utf8(out, cp);
                        break;
                    }
                    default:
                        if (e >= 0x20 && e < 0x7F) error(format("invalid escape sequence '\\%c'", e));
                        error(format("invalid escape sequence: byte 0x%02x after '\\'", static_cast<unsigned>(e)));
                }
                continue;
            }
            const size_t len = utf8_sequence(p_, n_, i_);
            if (len == 0) error(format("invalid UTF-8 byte 0x%02x in a string", static_cast<unsigned>(c)));
            out.append(reinterpret_cast<const char *>(p_ + i_), len);
            advance(len);
        }
    }

    // For a number token: the power of ten of its leading non-zero digit + 1
    // (saturated), e.g. "123.4" -> 3, "0.001" -> -2, "5e400" -> 401.
    static int64_t decimal_magnitude(const char * p, const char * end) {
        if (*p == '-') ++p;
        int64_t mag = 0;
        bool seen_nonzero = false;
        for (; p < end && *p >= '0' && *p <= '9'; ++p) { // integer part
            seen_nonzero = seen_nonzero || *p != '0';
            if (seen_nonzero) ++mag;
        }
        if (p < end && *p == '.') {
            for (++p; p < end && *p >= '0' && *p <= '9'; ++p) {
                if (seen_nonzero) continue;
                if (*p != '0') seen_nonzero = true;
                else --mag;
            }
        }
        if (!seen_nonzero) return INT64_MIN / 4; // zero
        int64_t e = 0;
        if (p < end && (*p == 'e' || *p == 'E')) {
            ++p;
            const bool neg = p < end && *p == '-';
            if (p < end && (*p == '+' || *p == '-')) ++p;
            for (; p < end; ++p) e = std::min<int64_t>(e * 10 + (*p - '0'), INT64_C(1) << 40);
            if (neg) e = -e;
        }
        return mag + e;
    }

    Value parse_number() {
        Value v = start_value(Value::Kind::Number);
        const size_t start = i_;
        bool frac = false, exp = false;
        if (p_[i_] == '-') advance();
        if (i_ >= n_ || !(p_[i_] >= '0' && p_[i_] <= '9')) error("invalid number: expected a digit after '-'");
        if (p_[i_] == '0') {
            advance();
            if (i_ < n_ && p_[i_] >= '0' && p_[i_] <= '9') error("invalid number: leading zeros are not allowed");
        } else {
            while (i_ < n_ && p_[i_] >= '0' && p_[i_] <= '9') advance();
        }
        if (i_ < n_ && p_[i_] == '.') {
            frac = true;
            advance();
            if (i_ >= n_ || !(p_[i_] >= '0' && p_[i_] <= '9')) error("invalid number: expected a digit after '.'");
            while (i_ < n_ && p_[i_] >= '0' && p_[i_] <= '9') advance();
        }
        if (i_ < n_ && (p_[i_] == 'e' || p_[i_] == 'E')) {
            exp = true;
            advance();
            if (i_ < n_ && (p_[i_] == '+' || p_[i_] == '-')) advance();
            if (i_ >= n_ || !(p_[i_] >= '0' && p_[i_] <= '9')) error("invalid number: expected a digit in the exponent");
            while (i_ < n_ && p_[i_] >= '0' && p_[i_] <= '9') advance();
        }
        const char * first = reinterpret_cast<const char *>(p_ + start);
        const char * last = reinterpret_cast<const char *>(p_ + i_);
        if (!frac && !exp) {
            int64_t iv = 0;
            auto r = std::from_chars(first, last, iv);
            if (r.ec == std::errc() && r.ptr == last) {
                v.integral = true;
                v.integer = iv;
            }
        }
        double d = 0.0;
        auto r = std::from_chars(first, last, d);
        if (r.ec == std::errc::result_out_of_range) {
            // Underflow reads as zero; overflow is an error. The decimal
            // magnitude (position of the first non-zero digit plus the
            // exponent) tells the two apart.
            if (decimal_magnitude(first, last) > 0)
                error_at(v.line, v.column,
                         "number " + std::string(first, std::min<size_t>(40, static_cast<size_t>(last - first))) +
                             " is out of the range of a double");
            d = *first == '-' ? -0.0 : 0.0;
        } else if (r.ec != std::errc() || r.ptr != last) {
            error_at(v.line, v.column, "invalid number");
        }
        v.number = d;
        return v;
    }
};

} // namespace

Value parse(std::string_view text, const Limits & limits) { return Parser(text, limits).run(); }

// ---------------------------------------------------------------------------
// Writer

std::string python_float_repr(double v) {
    if (std::isnan(v)) return "NaN";
    if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
    if (v == 0.0) return std::signbit(v) ? "-0.0" : "0.0";
    char buf[64];
    const auto r = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
    const std::string sci(buf, r.ptr); // e.g. "-1.2345e-05": shortest round-trip digits
    size_t k = 0;
    std::string out;
    if (sci[k] == '-') { out += '-'; ++k; }
    std::string digits;
    for (; k < sci.size() && sci[k] != 'e'; ++k)
        if (sci[k] != '.') digits += sci[k];
    const int exp10 = std::stoi(sci.substr(k + 1)); // value = d.ddd * 10^exp10
    const int decpt = exp10 + 1;                    // value = 0.dddd * 10^decpt
    const int nd = static_cast<int>(digits.size());
    if (decpt <= -4 || decpt > 16) {
        out += digits[0];
        if (nd > 1) { out += '.'; out += digits.substr(1); }
        const int e = decpt - 1;
        out += format("e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
    } else if (decpt <= 0) {
        out += "0.";
        out.append(static_cast<size_t>(-decpt), '0');
        out += digits;
    } else if (decpt >= nd) {
        out += digits;
        out.append(static_cast<size_t>(decpt - nd), '0');
        out += ".0";
    } else {
        out += digits.substr(0, static_cast<size_t>(decpt));
        out += '.';
        out += digits.substr(static_cast<size_t>(decpt));
    }
    return out;
}

namespace {

void write_string(const std::string & s, std::string & out, const Style & style) {
    size_t bad = 0;
    if (!valid_utf8(s, &bad))
        fail(QLORA_ERROR_INVALID_ARGUMENT, "string %s is not valid UTF-8 (byte %zu)", quote_for_message(s).c_str(), bad);
    out += '"';
    const auto * p = reinterpret_cast<const unsigned char *>(s.data());
    for (size_t i = 0; i < s.size();) {
        const unsigned char c = p[i];
        switch (c) {
            case '"': out += "\\\""; ++i; continue;
            case '\\': out += "\\\\"; ++i; continue;
            case '\b': out += "\\b"; ++i; continue;
            case '\f': out += "\\f"; ++i; continue;
            case '\n': out += "\\n"; ++i; continue;
            case '\r': out += "\\r"; ++i; continue;
            case '\t': out += "\\t"; ++i; continue;
            default: break;
        }
        if (c < 0x20 || (style.ensure_ascii && c == 0x7F)) {
            out += format("\\u%04x", static_cast<unsigned>(c));
            ++i;
            continue;
        }
        if (c < 0x80 || !style.ensure_ascii) {
            out += static_cast<char>(c);
            ++i;
            continue;
        }
        const size_t len = utf8_sequence(p, s.size(), i);
        const uint32_t cp = decode_utf8(p + i, len);
        if (cp >= 0x10000) {
            const uint32_t u = cp - 0x10000;
            out += format("\\u%04x\\u%04x", 0xD800 + (u >> 10), 0xDC00 + (u & 0x3FF));
        } else {
            out += format("\\u%04x", cp);
        }
        i += len;
    }
    out += '"';
}

void write_value(const Value & v, std::string & out, const Style & style) {
    switch (v.kind) {
        case Value::Kind::Null: out += "null"; return;
        case Value::Kind::Bool: out += v.boolean ? "true" : "false"; return;
        case Value::Kind::Number:
            if (v.integral) {
                out += std::to_string(v.integer);
            } else {
                if (!std::isfinite(v.number))
                    fail(QLORA_ERROR_INVALID_ARGUMENT, "cannot write the non-finite number %f as JSON", v.number);
                out += python_float_repr(v.number);
            }
            return;
        case Value::Kind::String: write_string(v.text, out, style); return;
        case Value::Kind::Array:
            out += '[';
            for (size_t k = 0; k < v.items.size(); ++k) {
                if (k) out += style.item_separator;
                write_value(v.items[k], out, style);
            }
            out += ']';
            return;
        case Value::Kind::Object:
            out += '{';
            for (size_t k = 0; k < v.members.size(); ++k) {
                if (k) out += style.item_separator;
                write_string(v.members[k].first, out, style);
                out += style.key_separator;
                write_value(v.members[k].second, out, style);
            }
            out += '}';
            return;
    }
}

} // namespace

void write(const Value & v, std::string & out, const Style & style) { write_value(v, out, style); }

std::string to_string(const Value & v, const Style & style) {
    std::string out;
    write_value(v, out, style);
    return out;
}

} // namespace qlora::json

// The strict JSON parser (native/src/io/json.cpp), which reads every JSON
// header of outside input: safetensors headers, bitsandbytes quant states and
// sharded-checkpoint indexes.
//
// Input: byte 0 picks the limits (default, or tight depth/value limits), the
// rest is the document. Properties:
//  - a rejection is a qlora::Error with QLORA_ERROR_FORMAT and a message
//    "line L, column C: ..." that points inside the input;
//  - an accepted document survives a round trip through both writers
//    (compact and Python style): parse(write(v)) == v, and writing again
//    gives the same text.
#include "fuzz_common.hpp"

#include "core/error.hpp"
#include "io/json.hpp"

#include <cmath>
#include <cstring>
#include <string_view>

namespace qfuzz {

namespace {

using qlora::json::Value;

bool same(const Value & a, const Value & b) {
    if (a.kind != b.kind) return false;
    switch (a.kind) {
        case Value::Kind::Null: return true;
        case Value::Kind::Bool: return a.boolean == b.boolean;
        case Value::Kind::Number:
            if (a.integral != b.integral) return false;
            if (a.integral) return a.integer == b.integer;
            // Written with the shortest round-trip digits: the same double,
            // including the sign of zero.
            return std::memcmp(&a.number, &b.number, sizeof(double)) == 0;
        case Value::Kind::String: return a.text == b.text;
        case Value::Kind::Array:
            if (a.items.size() != b.items.size()) return false;
            for (size_t i = 0; i < a.items.size(); ++i)
                if (!same(a.items[i], b.items[i])) return false;
            return true;
        case Value::Kind::Object:
            if (a.members.size() != b.members.size()) return false;
            for (size_t i = 0; i < a.members.size(); ++i)
                if (a.members[i].first != b.members[i].first || !same(a.members[i].second, b.members[i].second))
                    return false;
            return true;
    }
    return false;
}

// Counts lines and the longest line in UTF-8 characters (an error position
// must lie within the text, or one past its end).
void text_extent(std::string_view s, uint32_t & lines, uint32_t & max_cols) {
    lines = 1;
    max_cols = 0;
    uint32_t col = 0;
    for (unsigned char c : s) {
        if (c == '\n') {
            max_cols = std::max(max_cols, col);
            ++lines;
            col = 0;
        } else if ((c & 0xC0) != 0x80) {
            ++col;
        }
    }
    max_cols = std::max(max_cols, col);
}

void round_trip(const Value & v, const qlora::json::Style & style, const char * style_name) {
    std::string text;
    try {
        text = qlora::json::to_string(v, style);
    } catch (const qlora::Error & e) {
        QFUZZ_CHECK(false, "writing an accepted document (%s style) failed: %s", style_name, e.what());
        return;
    }
    Value again;
    try {
        again = qlora::json::parse(text);
    } catch (const qlora::Error & e) {
        QFUZZ_CHECK(false, "the %s writer produced text its own parser rejects: %s\n  text: %.200s", style_name,
                    e.what(), text.c_str());
        return;
    }
    QFUZZ_CHECK(same(v, again), "%s round trip changed the document\n  text: %.200s", style_name, text.c_str());
    QFUZZ_CHECK(qlora::json::to_string(again, style) == text, "%s writer is not idempotent", style_name);
}

} // namespace

int qfuzz_json(const uint8_t * data, size_t size) {
    if (size == 0) return 0;
    qlora::json::Limits limits;
    if (data[0] & 1) {
        limits.max_depth = 1 + (data[0] >> 1) % 8;
        limits.max_values = 1 + (data[0] >> 4) * 4;
        limits.max_bytes = 64 + (data[0] >> 1) * 4;
    }
    const std::string_view text(reinterpret_cast<const char *>(data + 1), size - 1);
    Value v;
    try {
        v = qlora::json::parse(text, limits);
    } catch (const qlora::Error & e) {
        QFUZZ_CHECK(e.status() == QLORA_ERROR_FORMAT, "parse failed with status %s: %s", qlora_status_string(e.status()),
                    e.what());
        unsigned line = 0, col = 0;
        QFUZZ_CHECK(std::sscanf(e.what(), "line %u, column %u: ", &line, &col) == 2,
                    "error message does not start with \"line L, column C: \": %s", e.what());
        uint32_t lines, cols;
        text_extent(text, lines, cols);
        QFUZZ_CHECK(line >= 1 && line <= lines && col >= 1 && col <= cols + 1,
                    "error position line %u, column %u is outside the input (%u lines, longest %u characters): %s",
                    line, col, lines, cols, e.what());
        return 0;
    } catch (const std::exception & e) {
        QFUZZ_CHECK(false, "parse threw something other than qlora::Error: %s", e.what());
        return 0;
    }
    QFUZZ_CHECK(text.size() <= limits.max_bytes, "accepted %zu bytes over the %zu-byte limit", text.size(),
                limits.max_bytes);
    round_trip(v, qlora::json::kCompact, "compact");
    round_trip(v, qlora::json::kPython, "python");
    return 0;
}

} // namespace qfuzz

// The strict JSON parser and serializer behind every header the library
// reads: accepted documents, rejected ones with their positions, limits,
// UTF-8, exact numbers, and output byte-identical to Python's json.dumps.
#include "core/error.hpp"
#include "io/json.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>

using qlora::json::Value;
namespace json = qlora::json;

namespace {

// Parses and expects a FORMAT error whose message contains `fragment`.
void expect_error(const std::string & text, const std::string & fragment, const json::Limits & limits = {}) {
    try {
        json::parse(text, limits);
        ADD_FAILURE() << "parsed without error: " << text;
    } catch (const qlora::Error & e) {
        EXPECT_EQ(e.status(), QLORA_ERROR_FORMAT) << e.what();
        EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos)
            << "input: " << text << "\nmessage: " << e.what() << "\nexpected fragment: " << fragment;
    }
}

} // namespace

TEST(IoJson, ParsesEveryKindOfValue) {
    const Value v = json::parse(
        " {\"a\": [1, -2, 3.5, -0.0, 1e3, true, false, null], \"s\": \"x\\n\\u00e9\\ud83d\\ude00\", \"o\": {}} \n");
    ASSERT_TRUE(v.is_object());
    ASSERT_EQ(v.members.size(), 3u);
    const Value & a = *v.find("a");
    ASSERT_EQ(a.items.size(), 8u);
    EXPECT_TRUE(a.items[0].integral);
    EXPECT_EQ(a.items[0].integer, 1);
    EXPECT_EQ(a.items[1].integer, -2);
    EXPECT_FALSE(a.items[2].integral);
    EXPECT_EQ(a.items[2].number, 3.5);
    EXPECT_TRUE(std::signbit(a.items[3].number));
    EXPECT_FALSE(a.items[4].integral); // 1e3 has an exponent: a number, not an integer token
    EXPECT_EQ(a.items[4].number, 1000.0);
    EXPECT_TRUE(a.items[5].is_bool() && a.items[5].boolean);
    EXPECT_TRUE(a.items[6].is_bool() && !a.items[6].boolean);
    EXPECT_TRUE(a.items[7].is_null());
    EXPECT_EQ(v.find("s")->text, "x\n\xc3\xa9\xf0\x9f\x98\x80");
    EXPECT_TRUE(v.find("o")->is_object());
    EXPECT_EQ(v.find("missing"), nullptr);
    // Positions are 1-based lines and columns.
    EXPECT_EQ(v.line, 1u);
    EXPECT_EQ(v.column, 2u);
    EXPECT_EQ(a.items[1].column, 12u);
}

TEST(IoJson, IntegersAreExactAcrossTheInt64Range) {
    Value v = json::parse("[9223372036854775807, -9223372036854775808, 9223372036854775808, 9007199254740993]");
    EXPECT_TRUE(v.items[0].integral);
    EXPECT_EQ(v.items[0].integer, INT64_MAX);
    EXPECT_EQ(v.items[1].integer, INT64_MIN);
    EXPECT_FALSE(v.items[2].integral); // beyond int64: only the double reading
    EXPECT_EQ(v.items[2].number, 9223372036854775808.0);
    EXPECT_EQ(v.items[3].integer, INT64_C(9007199254740993)); // not representable as a double
}

TEST(IoJson, DoublesAreCorrectlyRounded) {
    // Literals whose correct rounding is known (IEEE-754 binary64).
    const Value v = json::parse("[0.1, 2.2250738585072014e-308, 4.9e-324, 1.7976931348623157e308, 1e-400, "
                                "0.30000000000000004, 9007199254740993.0]");
    EXPECT_EQ(v.items[0].number, 0.1);
    EXPECT_EQ(v.items[1].number, 2.2250738585072014e-308);
    EXPECT_EQ(v.items[2].number, 4.9e-324);
    EXPECT_EQ(v.items[3].number, 1.7976931348623157e308);
    EXPECT_EQ(v.items[4].number, 0.0); // underflow reads as zero
    EXPECT_EQ(v.items[5].number, 0.30000000000000004);
    EXPECT_EQ(v.items[6].number, 9007199254740992.0); // ties to even
}

TEST(IoJson, RejectsWithLineAndColumn) {
    expect_error("", "line 1, column 1: unexpected end of input");
    expect_error("{\"a\": 1,}", "line 1, column 9: trailing comma before '}'");
    expect_error("[1, 2,]", "line 1, column 7: trailing comma before ']'");
    expect_error("{\n  \"a\": 1\n  \"b\": 2}", "line 3, column 3: unexpected '\"'; expected ',' or '}' in an object");
    expect_error("{\"a\" 1}", "line 1, column 6: unexpected '1'; expected ':'");
    expect_error("{1: 2}", "line 1, column 2: unexpected '1'; expected a string key");
    expect_error("[01]", "line 1, column 3: invalid number: leading zeros are not allowed");
    expect_error("[1.]", "expected a digit after '.'");
    expect_error("[-]", "expected a digit after '-'");
    expect_error("[1e]", "expected a digit in the exponent");
    expect_error("[NaN]", "line 1, column 2: unexpected 'N'; expected a value");
    expect_error("[Infinity]", "unexpected 'I'");
    expect_error("[1e400]", "line 1, column 2: number 1e400 is out of the range of a double");
    expect_error("// c\n{}", "unexpected '/'");
    expect_error("{} {}", "line 1, column 4: unexpected content after the JSON value");
    expect_error("[tru]", "unexpected 't'; expected a value");
    expect_error("\"abc", "unexpected end of input inside a string");
    expect_error("\"a\tb\"", "line 1, column 3: control character U+0009 in a string must be escaped");
    expect_error("\"\\x\"", "invalid escape sequence '\\x'");
    expect_error("\"\\u12G4\"", "invalid \\u escape: 'G' is not a hex digit");
    expect_error("\"\\udc00\"", "line 1, column 2: lone low surrogate \\uDC00");
    expect_error("\"\\ud800\"", "high surrogate \\uD800 is not followed by a low surrogate");
    expect_error("\"\\ud800\\u0041\"", "is followed by \\u0041, not a low surrogate");
    expect_error("{\"a\": 1, \"b\": 2, \"a\": 3}", "line 1, column 18: duplicate key 'a'");
    expect_error("\xef\xbb\xbf{}", "unexpected byte 0xef"); // no BOM
}

TEST(IoJson, RejectsInvalidUtf8InStrings) {
    expect_error("\"\xff\"", "invalid UTF-8 byte 0xff in a string");
    expect_error("\"\xc0\xaf\"", "invalid UTF-8 byte 0xc0");         // overlong '/'
    expect_error("\"\xe0\x80\xaf\"", "invalid UTF-8 byte 0xe0");     // overlong 3-byte
    expect_error("\"\xed\xa0\x80\"", "invalid UTF-8 byte 0xed");     // encoded surrogate
    expect_error("\"\xf4\x90\x80\x80\"", "invalid UTF-8 byte 0xf4"); // above U+10FFFF
    expect_error("\"\xe2\x82\"", "invalid UTF-8 byte 0xe2");         // truncated sequence
    // Columns count characters, not bytes.
    expect_error("[\"\xc3\xa9\xc3\xa9\", x]", "line 1, column 8: unexpected 'x'");
    EXPECT_TRUE(json::valid_utf8("a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"));
    size_t bad = 0;
    EXPECT_FALSE(json::valid_utf8("ab\x80", &bad));
    EXPECT_EQ(bad, 2u);
}

TEST(IoJson, EnforcesDepthSizeAndValueLimits) {
    json::Limits l;
    l.max_depth = 4;
    EXPECT_NO_THROW(json::parse("[[[[1]]]]", l));
    expect_error("[[[[[1]]]]]", "line 1, column 5: nesting deeper than 4 levels", l);
    // The default depth limit stops a stack-exhausting document early.
    expect_error(std::string(100000, '['), "nesting deeper than 64 levels");
    json::Limits s;
    s.max_bytes = 10;
    expect_error("[1, 2, 3, 4, 5]", "input is 15 bytes; the limit is 10", s);
    json::Limits c;
    c.max_values = 5;
    EXPECT_NO_THROW(json::parse("[1, 2, 3, 4]", c));
    expect_error("[1, 2, 3, 4, 5]", "more than 5 JSON values", c);
}

TEST(IoJson, PythonFloatReprMatchesCPython) {
    // Produced by CPython 3.11: print(v.hex(), repr(v)) for each value.
    const struct { double v; const char * repr; } cases[] = {
        {0x0.0p+0, "0.0"},
        {-0x0.0p+0, "-0.0"},
        {0x1.0000000000000p+0, "1.0"},
        {-0x1.0000000000000p+0, "-1.0"},
        {0x1.999999999999ap-4, "0.1"},
        {0x1.0000000000000p-1, "0.5"},
        {0x1.a36e2eb1c432dp-14, "0.0001"},
        {0x1.4f8b588e368f1p-17, "1e-05"},
        {0x1.02e4b6ce5dc68p-13, "0.00012345"},
        {0x1.c6bf526340000p+49, "1000000000000000.0"},
        {0x1.1c37937e08000p+53, "1e+16"},
        {0x1.18b54f22aeb00p+50, "1234567890123456.0"},
        {0x1.5ee2a2eb5a5c4p+53, "1.2345678901234568e+16"},
        {0x1.0f0cf064dd592p+73, "1e+22"},
        {0x1.249ad2594c37dp+332, "1e+100"},
        {0x0.0000000000001p-1022, "5e-324"},
        {0x1.fffffffffffffp+1023, "1.7976931348623157e+308"},
        {0x1.4000000000000p+1, "2.5"},
        {0x1.9000000000000p+6, "100.0"},
        {0x1.edd2f1a9fbe77p+6, "123.456"},
        {-0x1.421f5f40d8376p-22, "-3e-07"},
        {0x1.a302cee759401p-14, "9.99e-05"},
        // float32 values widened to double, as bitsandbytes' offset.item() gives them
        {-0x1.b799580000000p-26, "-2.558802947305594e-08"},
        {0x1.12929c0000000p-21, "5.114314944876241e-07"},
        {0x1.4ac8420000000p-26, "1.925406145630859e-08"},
        {-0x1.31cad60000000p+25, "-40080812.0"},
        {0x1.2375180000000p+13, "9326.63671875"},
        {0x1.bc0fa80000000p-22, "4.13564180234971e-07"},
        {0x1.fdec740000000p-28, "7.4203656552640496e-09"},
        {0x1.a7ece00000000p-17, "1.2633958249352872e-05"},
        {0x1.1eb6480000000p-23, "1.3351069583222852e-07"},
        {-0x1.1dfcec0000000p+12, "-4575.8076171875"},
        {0x1.1a377e0000000p-14, "6.728572043357417e-05"},
        {0x1.15626c0000000p+1, "2.1670660972595215"},
        {-0x1.5cc08e0000000p+3, "-10.898505210876465"},
        {0x1.3e2a220000000p-11, "0.0006068507791496813"},
        {0x1.541d480000000p-7, "0.010379467159509659"},
        {0x1.887f4e0000000p+9, "784.9945678710938"},
        {0x1.32f6ce0000000p-5, "0.03747120127081871"},
    };
    for (const auto & c : cases) EXPECT_EQ(json::python_float_repr(c.v), c.repr) << std::hexfloat << c.v;
}

TEST(IoJson, ReprRoundTripsOnRandomDoubles) {
    std::mt19937_64 rng(42);
    for (int i = 0; i < 20000; ++i) {
        double d;
        uint64_t bits = rng();
        std::memcpy(&d, &bits, 8);
        if (!std::isfinite(d)) continue;
        const std::string s = json::python_float_repr(d);
        const Value v = json::parse(s);
        ASSERT_EQ(std::memcmp(&v.number, &d, 8), 0) << s;
    }
}

TEST(IoJson, WritesLikePythonJsonDumps) {
    // CPython 3.11: json.dumps({"a": [1, 2.5, None, True, False, {}], "b": []})
    Value v = Value::object();
    Value & a = v.add("a", Value::array());
    a.push(Value::of_int(1));
    a.push(Value::of_double(2.5));
    a.push(Value::null());
    a.push(Value::of_bool(true));
    a.push(Value::of_bool(false));
    a.push(Value::object());
    v.add("b", Value::array());
    EXPECT_EQ(json::to_string(v, json::kPython), "{\"a\": [1, 2.5, null, true, false, {}], \"b\": []}");
    EXPECT_EQ(json::to_string(v, json::kCompact), "{\"a\":[1,2.5,null,true,false,{}],\"b\":[]}");
    // json.dumps("h\u00e9llo\u2028\U0001F600\x7f\x01\n\"\\/\t\b\f\r")
    const Value s = Value::of_string("h\xc3\xa9llo\xe2\x80\xa8\xf0\x9f\x98\x80\x7f\x01\n\"\\/\t\b\f\r");
    EXPECT_EQ(json::to_string(s, json::kPython),
              "\"h\\u00e9llo\\u2028\\ud83d\\ude00\\u007f\\u0001\\n\\\"\\\\/\\t\\b\\f\\r\"");
    // serde_json (compact): UTF-8 and DEL as they are, control characters escaped.
    EXPECT_EQ(json::to_string(s, json::kCompact),
              "\"h\xc3\xa9llo\xe2\x80\xa8\xf0\x9f\x98\x80\x7f\\u0001\\n\\\"\\\\/\\t\\b\\f\\r\"");
    // What is written parses back to the same string.
    EXPECT_EQ(json::parse(json::to_string(s, json::kPython)).text, s.text);
    EXPECT_EQ(json::parse(json::to_string(s, json::kCompact)).text, s.text);
}

TEST(IoJson, WriterRejectsWhatJsonCannotHold) {
    EXPECT_THROW(json::to_string(Value::of_double(NAN), json::kPython), qlora::Error);
    EXPECT_THROW(json::to_string(Value::of_double(INFINITY), json::kCompact), qlora::Error);
    EXPECT_THROW(json::to_string(Value::of_string("\xff"), json::kCompact), qlora::Error);
}

TEST(IoJson, RandomMutationsNeverCrash) {
    // Every prefix and thousands of byte mutations of a valid document:
    // each either parses or throws a FORMAT error (never anything else).
    const std::string doc =
        "{\"__metadata__\":{\"format\":\"pt\"},\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
        "\"s\":\"\\u00e9\\ud83d\\ude00\",\"n\":[-1.5e-3,0,true,null]}";
    auto attempt = [](const std::string & t) {
        try {
            json::parse(t);
        } catch (const qlora::Error & e) {
            ASSERT_EQ(e.status(), QLORA_ERROR_FORMAT);
        }
    };
    for (size_t n = 0; n <= doc.size(); ++n) attempt(doc.substr(0, n));
    std::mt19937 rng(1);
    for (int i = 0; i < 20000; ++i) {
        std::string t = doc;
        const int edits = 1 + static_cast<int>(rng() % 4);
        for (int k = 0; k < edits; ++k) t[rng() % t.size()] = static_cast<char>(rng() & 0xff);
        attempt(t);
    }
}

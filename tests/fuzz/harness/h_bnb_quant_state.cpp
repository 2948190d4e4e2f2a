// bitsandbytes quant-state JSON (qlora_bnb_parse_quant_state), the packed
// "<prefix>weight.quant_state.bitsandbytes__nf4" tensor of a 4-bit checkpoint.
//
// Input: the JSON bytes. Properties: FORMAT or success, the out-param
// untouched on failure; an accepted state is valid (quant type, power-of-two
// block sizes in [32, 4096], positive shape, a finite float32 nested offset);
// writing it as bitsandbytes does and parsing that again gives the same state.
#include "fuzz_common.hpp"

#include "io/bnb.hpp"

#include <cmath>
#include <cstring>

namespace qfuzz {

namespace {

bool pow2_block(int32_t b) { return b >= 32 && b <= 4096 && (b & (b - 1)) == 0; }

bool same(const qlora_bnb_quant_state & a, const qlora_bnb_quant_state & b) {
    return a.quant_type == b.quant_type && a.blocksize == b.blocksize && a.dtype == b.dtype && a.rows == b.rows &&
           a.cols == b.cols && a.double_quant == b.double_quant && a.nested_blocksize == b.nested_blocksize &&
           std::memcmp(&a.nested_offset, &b.nested_offset, sizeof(float)) == 0;
}

} // namespace

int qfuzz_bnb_quant_state(const uint8_t * data, size_t size) {
    std::vector<uint8_t> copy(data, data + size); // a heap copy: reads past the end are caught
    qlora_view v{copy.data(), QLORA_DTYPE_U8, QLORA_DEVICE_HOST, 1, static_cast<int64_t>(size), 0};
    qlora_bnb_quant_state s;
    std::memset(&s, 0xA5, sizeof s);
    qlora_bnb_quant_state untouched;
    std::memcpy(&untouched, &s, sizeof s);
    const qlora_status st = qlora_bnb_parse_quant_state(&v, &s);
    if (size == 0) {
        check_status(st, "qlora_bnb_parse_quant_state", {QLORA_ERROR_INVALID_ARGUMENT});
        QFUZZ_CHECK(st != QLORA_OK, "an empty view was accepted");
        return 0;
    }
    check_status(st, "qlora_bnb_parse_quant_state", {QLORA_ERROR_FORMAT});
    if (st != QLORA_OK) {
        QFUZZ_CHECK(std::memcmp(&s, &untouched, sizeof s) == 0, "parse failed but wrote its out-param");
        return 0;
    }
    const int32_t qt = static_cast<int32_t>(s.quant_type), dt = static_cast<int32_t>(s.dtype);
    QFUZZ_CHECK(qt == QLORA_QUANT_NF4 || qt == QLORA_QUANT_FP4, "quant_type %d", qt);
    QFUZZ_CHECK(dt == QLORA_DTYPE_F32 || dt == QLORA_DTYPE_F16 || dt == QLORA_DTYPE_BF16, "dtype %d", dt);
    QFUZZ_CHECK(pow2_block(s.blocksize), "blocksize %d", s.blocksize);
    QFUZZ_CHECK(s.rows >= 1 && s.cols >= 1 && s.rows <= (INT64_C(1) << 40) / s.cols, "shape [%lld, %lld]",
                static_cast<long long>(s.rows), static_cast<long long>(s.cols));
    QFUZZ_CHECK(s.double_quant == 0 || s.double_quant == 1, "double_quant %d", s.double_quant);
    if (s.double_quant)
        QFUZZ_CHECK(pow2_block(s.nested_blocksize) && std::isfinite(s.nested_offset), "nested fields");

    std::string text;
    try {
        text = qlora::io::format_quant_state(s);
    } catch (const std::exception & e) {
        QFUZZ_CHECK(false, "format_quant_state failed on an accepted state: %s", e.what());
        return 0;
    }
    std::vector<uint8_t> again_bytes(text.begin(), text.end());
    qlora_view v2{again_bytes.data(), QLORA_DTYPE_U8, QLORA_DEVICE_HOST, 1, static_cast<int64_t>(text.size()), 0};
    qlora_bnb_quant_state again{};
    const qlora_status st2 = qlora_bnb_parse_quant_state(&v2, &again);
    check_status(st2, "qlora_bnb_parse_quant_state", {});
    QFUZZ_CHECK(st2 == QLORA_OK && same(s, again), "write + parse changed the quant state; text: %s", text.c_str());
    return 0;
}

} // namespace qfuzz

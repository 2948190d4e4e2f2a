// bitsandbytes 4-bit checkpoint interop: the packed quant-state JSON and the
// key layout of a Linear4bit weight (FORMATS.md).
#pragma once

#include "qlora.h"

#include <string>
#include <string_view>

namespace qlora::io {

// Parses and validates a quant-state JSON. `where` starts every error
// message (e.g. "model.safetensors: 'x.weight.quant_state.bitsandbytes__nf4'").
qlora_bnb_quant_state parse_quant_state(std::string_view json, const std::string & where);

// The JSON exactly as bitsandbytes writes it: Python's json.dumps of
// {quant_type, blocksize, dtype, shape[, nested_blocksize, nested_dtype,
// nested_offset]} with ", " / ": " separators and nested_offset as repr(float).
std::string format_quant_state(const qlora_bnb_quant_state & s);

} // namespace qlora::io

// bitsandbytes 4-bit weights in safetensors: read without re-quantizing,
// write with bitsandbytes' exact keys, dtypes, shapes and quant-state JSON.
#include "io/bnb.hpp"

#include "core/context.hpp"
#include "core/error.hpp"
#include "core/view.hpp"
#include "io/json.hpp"
#include "io/safetensors.hpp"
#include "quant/q4_tensor.hpp"

#include <cfloat>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

namespace qlora::io {

namespace {

std::string q(std::string_view s) { return json::quote_for_message(s); }

bool pow2_in_range(int64_t v) { return v >= 32 && v <= 4096 && (v & (v - 1)) == 0; }

std::string got(const json::Value & v) {
    if (v.is_string()) return q(v.text);
    if (v.is_number()) return v.integral ? std::to_string(v.integer) : json::python_float_repr(v.number);
    return json::kind_name(v.kind);
}

const json::Value & field(const json::Value & root, const char * key, const std::string & where) {
    const json::Value * v = root.find(key);
    if (!v) fail(QLORA_ERROR_FORMAT, "%s: missing \"%s\"", where.c_str(), key);
    return *v;
}

int32_t blocksize_field(const json::Value & root, const char * key, const std::string & where) {
    const json::Value & v = field(root, key, where);
    if (!v.is_number() || !v.integral || !pow2_in_range(v.integer))
        fail(QLORA_ERROR_FORMAT, "%s: \"%s\" must be a power of two in [32, 4096], got %s", where.c_str(), key,
             got(v).c_str());
    return static_cast<int32_t>(v.integer);
}

const char * dtype_string(qlora_dtype d) {
    switch (d) {
        case QLORA_DTYPE_F32: return "float32";
        case QLORA_DTYPE_F16: return "float16";
        case QLORA_DTYPE_BF16: return "bfloat16";
        default: return nullptr;
    }
}

} // namespace

qlora_bnb_quant_state parse_quant_state(std::string_view text, const std::string & where) {
    json::Limits limits;
    limits.max_bytes = 65536;
    limits.max_depth = 4;
    limits.max_values = 4096;
    json::Value root;
    try {
        root = json::parse(text, limits);
    } catch (const Error & e) {
        fail(QLORA_ERROR_FORMAT, "%s is not valid JSON: %s", where.c_str(), e.what());
    }
    if (!root.is_object())
        fail(QLORA_ERROR_FORMAT, "%s must be a JSON object, got %s", where.c_str(), json::kind_name(root.kind));

    qlora_bnb_quant_state s{};
    const json::Value & qt = field(root, "quant_type", where);
    if (qt.is_string() && qt.text == "nf4") s.quant_type = QLORA_QUANT_NF4;
    else if (qt.is_string() && qt.text == "fp4") s.quant_type = QLORA_QUANT_FP4;
    else fail(QLORA_ERROR_FORMAT, "%s: \"quant_type\" must be \"nf4\" or \"fp4\", got %s", where.c_str(), got(qt).c_str());

    s.blocksize = blocksize_field(root, "blocksize", where);

    const json::Value & dt = field(root, "dtype", where);
    if (dt.is_string() && dt.text == "float32") s.dtype = QLORA_DTYPE_F32;
    else if (dt.is_string() && dt.text == "float16") s.dtype = QLORA_DTYPE_F16;
    else if (dt.is_string() && dt.text == "bfloat16") s.dtype = QLORA_DTYPE_BF16;
    else
        fail(QLORA_ERROR_FORMAT, "%s: \"dtype\" must be \"float32\", \"float16\" or \"bfloat16\", got %s", where.c_str(),
             got(dt).c_str());

    const json::Value & sh = field(root, "shape", where);
    const bool shape_ok = sh.is_array() && sh.items.size() == 2 && sh.items[0].is_number() && sh.items[0].integral &&
                          sh.items[1].is_number() && sh.items[1].integral && sh.items[0].integer >= 1 &&
                          sh.items[1].integer >= 1;
    if (!shape_ok)
        fail(QLORA_ERROR_FORMAT, "%s: \"shape\" must be [rows, cols] with two positive integers (line %u, column %u)",
             where.c_str(), sh.line, sh.column);
    s.rows = sh.items[0].integer;
    s.cols = sh.items[1].integer;
    if (s.rows > (INT64_C(1) << 40) / s.cols)
        fail(QLORA_ERROR_FORMAT, "%s: \"shape\" [%lld, %lld] has too many elements", where.c_str(),
             static_cast<long long>(s.rows), static_cast<long long>(s.cols));

    const char * nested_keys[3] = {"nested_blocksize", "nested_dtype", "nested_offset"};
    int present = 0;
    for (const char * k : nested_keys) present += root.find(k) != nullptr;
    if (present != 0 && present != 3) {
        for (const char * k : nested_keys)
            if (!root.find(k))
                fail(QLORA_ERROR_FORMAT,
                     "%s: missing \"%s\" (double quantization needs nested_blocksize, nested_dtype and nested_offset)",
                     where.c_str(), k);
    }
    s.double_quant = present == 3 ? 1 : 0;
    if (s.double_quant) {
        s.nested_blocksize = blocksize_field(root, "nested_blocksize", where);
        const json::Value & nd = field(root, "nested_dtype", where);
        if (!nd.is_string() || nd.text != "float32")
            fail(QLORA_ERROR_FORMAT, "%s: \"nested_dtype\" must be \"float32\", got %s", where.c_str(), got(nd).c_str());
        const json::Value & off = field(root, "nested_offset", where);
        if (!off.is_number() || !std::isfinite(off.number) || std::fabs(off.number) > static_cast<double>(FLT_MAX))
            fail(QLORA_ERROR_FORMAT, "%s: \"nested_offset\" must be a finite float32 number, got %s", where.c_str(),
                 got(off).c_str());
        s.nested_offset = static_cast<float>(off.number);
    }
    return s;
}

std::string format_quant_state(const qlora_bnb_quant_state & s) {
    using json::Value;
    const char * dt = dtype_string(s.dtype);
    QLORA_CHECK_ARG(dt != nullptr, "quant state dtype must be F32, F16 or BF16, got %d", static_cast<int>(s.dtype));
    Value root = Value::object();
    root.add("quant_type", Value::of_string(s.quant_type == QLORA_QUANT_FP4 ? "fp4" : "nf4"));
    root.add("blocksize", Value::of_int(s.blocksize));
    root.add("dtype", Value::of_string(dt));
    Value & shape = root.add("shape", Value::array());
    shape.push(Value::of_int(s.rows));
    shape.push(Value::of_int(s.cols));
    if (s.double_quant) {
        root.add("nested_blocksize", Value::of_int(s.nested_blocksize));
        root.add("nested_dtype", Value::of_string("float32"));
        // Python: self.offset.item() -> the float32 value as a double, printed by repr().
        root.add("nested_offset", Value::of_double(static_cast<double>(s.nested_offset)));
    }
    return json::to_string(root, json::kPython);
}

namespace {

// The tensors of one 4-bit weight in an open file, checked one by one.
class Bnb4Reader {
public:
    Bnb4Reader(const qlora_safetensors & f, std::string prefix) : f_(f), p_(std::move(prefix)) {}

    const StTensor * optional(const char * suffix) const { return f_.find(p_ + "weight" + suffix); }

    const StTensor & required(const char * suffix, const char * why) const {
        const StTensor * t = optional(suffix);
        if (!t)
            fail(QLORA_ERROR_FORMAT, "%s: missing tensor %s (%s of the 4-bit weight under prefix %s)",
                 f_.display.c_str(), q(p_ + "weight" + suffix).c_str(), why, q(p_).c_str());
        return *t;
    }

    std::string where(const StTensor & t) const { return f_.path_of(t) + ": " + q(t.name); }

    // Checks dtype and shape exactly; `because` explains the expectation.
    void expect(const StTensor & t, qlora_dtype dtype, std::initializer_list<int64_t> shape, const std::string & because) const {
        bool ok = t.dtype == dtype && t.n_dims == static_cast<int32_t>(shape.size());
        int d = 0;
        for (int64_t v : shape) ok = ok && t.shape[d++] == v;
        if (!ok) {
            std::vector<int64_t> want(shape);
            fail(QLORA_ERROR_FORMAT, "%s must be %s %s%s, got %s %s", where(t).c_str(), st_dtype_name(dtype),
                 shape_string(want.data(), static_cast<int32_t>(want.size())).c_str(), because.c_str(),
                 st_dtype_name(t.dtype), shape_string(t.shape, t.n_dims).c_str());
        }
    }

    // Copies an F32 tensor into aligned memory (the file gives no alignment
    // guarantee) and checks every value is finite.
    std::vector<float> floats(const StTensor & t) const {
        std::vector<float> v(static_cast<size_t>(t.numel));
        std::memcpy(v.data(), f_.tensor_data(t), static_cast<size_t>(t.nbytes));
        for (size_t i = 0; i < v.size(); ++i)
            if (!std::isfinite(v[i]))
                fail(QLORA_ERROR_FORMAT, "%s: element %zu is %f; scales and code tables must be finite",
                     where(t).c_str(), i, static_cast<double>(v[i]));
        return v;
    }

    const uint8_t * bytes(const StTensor & t) const { return f_.tensor_data(t); }

private:
    const qlora_safetensors & f_;
    std::string               p_;
};

} // namespace

} // namespace qlora::io

using namespace qlora;
using namespace qlora::io;

extern "C" {

QLORA_API qlora_status qlora_bnb_parse_quant_state(const qlora_view * json, qlora_bnb_quant_state * out) {
    return QLORA_GUARD({
        const ViewInfo v = check_contiguous(json, "json", {QLORA_DTYPE_U8});
        QLORA_CHECK_NOT_NULL(out);
        *out = parse_quant_state(std::string_view(v.as<const char>(), static_cast<size_t>(v.numel())), "quant state");
    });
}

QLORA_API qlora_status qlora_bnb_read_q4(qlora_context_t ctx, qlora_safetensors_t file, const char * prefix,
                                         qlora_q4_tensor_t * out) {
    return QLORA_GUARD({
        qlora::checked(ctx);
        const auto & f = io::checked(file);
        QLORA_CHECK_NOT_NULL(prefix);
        QLORA_CHECK_NOT_NULL(out);
        const std::string P = prefix;
        Bnb4Reader r(f, P);

        const StTensor * qs_nf4 = r.optional(".quant_state.bitsandbytes__nf4");
        const StTensor * qs_fp4 = r.optional(".quant_state.bitsandbytes__fp4");
        if (!qs_nf4 && !qs_fp4)
            fail(QLORA_ERROR_FORMAT, "%s: no 4-bit weight under prefix %s: missing tensor %s (or its __fp4 variant)",
                 f.display.c_str(), q(P).c_str(), q(P + "weight.quant_state.bitsandbytes__nf4").c_str());
        if (qs_nf4 && qs_fp4)
            fail(QLORA_ERROR_FORMAT, "%s: both %s and %s exist; a weight has one quant type", f.display.c_str(),
                 q(qs_nf4->name).c_str(), q(qs_fp4->name).c_str());
        const StTensor & qs = qs_nf4 ? *qs_nf4 : *qs_fp4;
        if (qs.dtype != QLORA_DTYPE_U8 || qs.n_dims != 1)
            fail(QLORA_ERROR_FORMAT, "%s must be U8 with one dimension (UTF-8 JSON bytes), got %s %s", r.where(qs).c_str(),
                 st_dtype_name(qs.dtype), shape_string(qs.shape, qs.n_dims).c_str());
        const qlora_bnb_quant_state s = parse_quant_state(
            std::string_view(reinterpret_cast<const char *>(r.bytes(qs)), static_cast<size_t>(qs.nbytes)), r.where(qs));
        const qlora_quant_type key_type = qs_nf4 ? QLORA_QUANT_NF4 : QLORA_QUANT_FP4;
        if (s.quant_type != key_type)
            fail(QLORA_ERROR_FORMAT, "%s: \"quant_type\" is \"%s\" but the key says %s", r.where(qs).c_str(),
                 s.quant_type == QLORA_QUANT_NF4 ? "nf4" : "fp4", key_type == QLORA_QUANT_NF4 ? "nf4" : "fp4");

        const int64_t numel = s.rows * s.cols;
        const int64_t nb = (numel + s.blocksize - 1) / s.blocksize;
        const std::string for_shape = format(" for shape [%lld, %lld]", static_cast<long long>(s.rows),
                                             static_cast<long long>(s.cols));
        const std::string for_blocks = format(" for shape [%lld, %lld] with blocksize %d", static_cast<long long>(s.rows),
                                              static_cast<long long>(s.cols), s.blocksize);

        const StTensor & w = r.required("", "the packed nibbles");
        r.expect(w, QLORA_DTYPE_U8, {(numel + 1) / 2, 1}, for_shape);
        const StTensor & am = r.required(".absmax", "the block scales");
        const StTensor & qm = r.required(".quant_map", "the 4-bit code table");
        r.expect(qm, QLORA_DTYPE_F32, {16}, "");
        const std::vector<float> code = r.floats(qm);

        qlora_quant_params params = qlora_quant_default_params();
        params.quant_type = s.quant_type;
        params.blocksize = s.blocksize;
        params.double_quant = s.double_quant;
        params.nested_blocksize = s.double_quant ? s.nested_blocksize : 256;
        qlora_q4_parts parts{};
        parts.packed = r.bytes(w);
        parts.code = code.data();
        std::vector<float> absmax, nested_absmax, nested_code;
        if (s.double_quant) {
            r.expect(am, QLORA_DTYPE_U8, {nb}, for_blocks + " and double quantization");
            const StTensor & na = r.required(".nested_absmax", "the second-level scales");
            const StTensor & nq = r.required(".nested_quant_map", "the 8-bit code table");
            const int64_t nnb = (nb + s.nested_blocksize - 1) / s.nested_blocksize;
            r.expect(na, QLORA_DTYPE_F32, {nnb},
                     format(" for %lld blocks with nested_blocksize %d", static_cast<long long>(nb), s.nested_blocksize));
            r.expect(nq, QLORA_DTYPE_F32, {256}, "");
            nested_absmax = r.floats(na);
            nested_code = r.floats(nq);
            parts.qabsmax = r.bytes(am);
            parts.nested_absmax = nested_absmax.data();
            parts.nested_code = nested_code.data();
            parts.nested_offset = s.nested_offset;
        } else {
            r.expect(am, QLORA_DTYPE_F32, {nb}, for_blocks + " without double quantization");
            for (const char * extra : {".nested_absmax", ".nested_quant_map"})
                if (const StTensor * t = r.optional(extra))
                    fail(QLORA_ERROR_FORMAT, "%s exists but the quant state has no nested_* fields (no double quantization)",
                         r.where(*t).c_str());
            absmax = r.floats(am);
            parts.absmax = absmax.data();
        }
        qlora_q4_tensor_t t = nullptr;
        const qlora_status st = qlora_q4_from_parts(ctx, s.rows, s.cols, &params, s.dtype, &parts, &t);
        if (st != QLORA_OK) fail(st, "%s: %s", f.display.c_str(), qlora_last_error());
        *out = t;
    });
}

QLORA_API qlora_status qlora_bnb_add_q4(qlora_safetensors_writer_t writer, const char * prefix,
                                        qlora_q4_tensor_t tensor, int32_t borrow) {
    return QLORA_GUARD({
        auto & w = io::checked(writer);
        QLORA_CHECK_NOT_NULL(prefix);
        const auto & t = qlora::checked(tensor);
        if (t.device != QLORA_DEVICE_HOST)
            fail(QLORA_ERROR_UNSUPPORTED, "tensor lives on device %d; copy it to the host first", t.device);
        const std::string P = std::string(prefix) + "weight";

        qlora_bnb_quant_state s{};
        s.quant_type = t.quant_type;
        s.blocksize = t.blocksize;
        s.dtype = t.orig_dtype;
        s.rows = t.rows;
        s.cols = t.cols;
        s.double_quant = t.double_quant ? 1 : 0;
        s.nested_blocksize = t.double_quant ? t.nested_blocksize : 0;
        s.nested_offset = t.double_quant ? t.nested_offset : 0.0f;
        const std::string js = format_quant_state(s);

        auto view = [](const void * p, qlora_dtype dt, int64_t n) {
            qlora_view v{};
            v.data = const_cast<void *>(p);
            v.dtype = dt;
            v.device = QLORA_DEVICE_HOST;
            v.rows = 1;
            v.cols = n;
            return v;
        };
        std::vector<qlora_safetensors_writer::Entry> entries;
        const int64_t nb = t.n_blocks();
        {
            const qlora_view v = view(t.packed.data(), QLORA_DTYPE_U8, t.packed_bytes());
            const int64_t shape[2] = {t.packed_bytes(), 1};
            entries.push_back(make_entry(P.c_str(), &v, 2, shape, borrow != 0));
        }
        {
            const qlora_view v = t.double_quant ? view(t.qabsmax.data(), QLORA_DTYPE_U8, nb)
                                                : view(t.absmax.data(), QLORA_DTYPE_F32, nb);
            entries.push_back(make_entry((P + ".absmax").c_str(), &v, 1, &nb, borrow != 0));
        }
        {
            const qlora_view v = view(t.code, QLORA_DTYPE_F32, 16);
            const int64_t n = 16;
            entries.push_back(make_entry((P + ".quant_map").c_str(), &v, 1, &n, false));
        }
        if (t.double_quant) {
            const int64_t nnb = t.n_nested_blocks();
            const qlora_view na = view(t.nested_absmax.data(), QLORA_DTYPE_F32, nnb);
            entries.push_back(make_entry((P + ".nested_absmax").c_str(), &na, 1, &nnb, false));
            const qlora_view nq = view(t.nested_code, QLORA_DTYPE_F32, 256);
            const int64_t n = 256;
            entries.push_back(make_entry((P + ".nested_quant_map").c_str(), &nq, 1, &n, false));
        }
        {
            const qlora_view v = view(js.data(), QLORA_DTYPE_U8, static_cast<int64_t>(js.size()));
            const int64_t n = static_cast<int64_t>(js.size());
            const std::string key = P + ".quant_state.bitsandbytes__" + (t.quant_type == QLORA_QUANT_FP4 ? "fp4" : "nf4");
            entries.push_back(make_entry(key.c_str(), &v, 1, &n, false));
        }
        // All or nothing: check every name before adding any.
        for (const auto & e : entries)
            QLORA_CHECK_ARG(w.by_name.find(e.name) == w.by_name.end(), "a tensor named '%s' was already added",
                            e.name.c_str());
        for (auto & e : entries) w.add(std::move(e));
    });
}

} // extern "C"

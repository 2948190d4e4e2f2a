// The C ABI with random arguments: a small interpreter that decodes the fuzz
// input into a sequence of qlora_* calls on a handful of live handles, with
// random views (dtypes, shapes, strides, devices, NULLs), random enum values
// (as raw ints, as a C# or C caller may pass them), random sizes and paths.
//
// What a caller may get wrong is exactly what the header says is checked:
// NULL handles and pointers, unknown enum values, shapes and strides, element
// counts that disagree, device memory where host memory is needed, overflowing
// sizes. What a caller must get right is not varied: every view's memory is
// really there for the extent it claims (a lie about that is the caller's
// bug, which no C library can detect), borrowed memory outlives its writer,
// and sizes stay small enough to allocate. Every call's status is checked
// (check_status: a known value, never INTERNAL, a message naming the
// function exactly when it failed), out-params are checked to be untouched on
// failure, and the sanitizers watch every byte the library touches.
#include "fuzz_common.hpp"

#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace qfuzz {

namespace {

template <typename E>
E raw(int32_t v) {
    static_assert(sizeof(E) == sizeof(int32_t));
    E e;
    std::memcpy(&e, &v, sizeof e);
    return e;
}

uint64_t splitmix(uint64_t & s) {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

constexpr int kSlots = 3;
constexpr int64_t kMaxElems = 1 << 14; // per honest view

// ---- views ----------------------------------------------------------------

// A view and the memory behind it. `honest`: the memory covers what the view
// claims, so the library may read/write all of it.
struct View {
    qlora_view           v{};
    std::vector<uint8_t> mem; // 64-byte slack in front is not added: ASan sees every byte past the end
    bool                 null_view = false;
    const qlora_view * ptr() const { return null_view ? nullptr : &v; }
};

constexpr qlora_dtype kAllDtypes[] = {QLORA_DTYPE_F32,  QLORA_DTYPE_F16,     QLORA_DTYPE_BF16,   QLORA_DTYPE_U8,
                                      QLORA_DTYPE_I32,  QLORA_DTYPE_I64,     QLORA_DTYPE_F64,    QLORA_DTYPE_I8,
                                      QLORA_DTYPE_I16,  QLORA_DTYPE_U16,     QLORA_DTYPE_U32,    QLORA_DTYPE_U64,
                                      QLORA_DTYPE_BOOL, QLORA_DTYPE_F8_E4M3, QLORA_DTYPE_F8_E5M2};

class Interp {
public:
    Interp(const uint8_t * d, size_t n) : in_(d, n) { seed_ = in_.u64(); }
    ~Interp();
    void run();

private:
    Bytes    in_;
    uint64_t seed_;

    // Live handles. Borrowing: a writer keeps the memory (and 4-bit tensors)
    // it borrowed until the writer is freed.
    struct Q4 {
        qlora_q4_tensor_t h = nullptr;
        ~Q4() { qlora_q4_free(h); }
    };
    struct Writer {
        qlora_safetensors_writer_t              h = nullptr;
        std::vector<std::shared_ptr<View>>      borrowed;
        std::vector<std::shared_ptr<Q4>>        borrowed_q4;
    };
    struct Opt {
        qlora_adamw_t        h = nullptr;
        std::vector<int64_t> sizes;
    };
    struct Pin {
        int64_t id, offset, bytes;
    };
    struct PagerSlot {
        qlora_pager_t        h = nullptr;
        std::vector<int64_t> ids;
        std::vector<Pin>     pins;
    };
    std::array<qlora_context_t, kSlots>        ctx_{};
    std::array<std::shared_ptr<Q4>, kSlots>    q4_{};
    std::array<Writer, kSlots>                 writer_{};
    std::array<qlora_safetensors_t, kSlots>    reader_{};
    std::array<PagerSlot, kSlots>              pager_{};
    std::array<Opt, kSlots>                    opt_{};
    int                                        files_ = 0;

    int slot() { return static_cast<int>(in_.below(kSlots)); }
    qlora_context_t ctx() { return ctx_[static_cast<size_t>(slot())]; }
    qlora_q4_tensor_t q4() {
        const auto & q = q4_[static_cast<size_t>(slot())];
        return q ? q->h : nullptr;
    }

    float   rand_float();
    int64_t rand_dim(int64_t hint);
    int32_t rand_blocksize();
    int32_t rand_enum(int32_t n_valid);
    std::string rand_name();
    std::string rand_path();
    // A view of about hint_rows x hint_cols (0: any) whose dtype is mostly `dtype`
    // (-1: mostly F32/F16/BF16).
    std::shared_ptr<View> make_view(int64_t hint_rows, int64_t hint_cols, int32_t dtype = -1);
    void fill(View & v);
    void put_q4(qlora_q4_tensor_t h);

    void op_context();
    void op_q4_quantize();
    void op_q4_use();
    void op_q4_from_parts();
    void op_matmul();
    void op_q8();
    void op_writer();
    void op_reader();
    void op_pager();
    void op_adamw();
    void op_adamw_step();
    void op_misc();
    void op_null_handles();
};

Interp::~Interp() {
    for (auto & o : opt_) qlora_adamw_free(o.h);
    for (auto & p : pager_) qlora_pager_free(p.h);
    for (auto & r : reader_) qlora_safetensors_free(r);
    for (auto & w : writer_) qlora_safetensors_writer_free(w.h);
    for (auto & c : ctx_) qlora_context_free(c);
}

float Interp::rand_float() {
    switch (in_.u8() % 8) {
        case 0: return 0.0f;
        case 1: return 1.0f;
        case 2: return NAN;
        case 3: return INFINITY;
        case 4: return -1e30f;
        case 5: return in_.f32();
        default: return static_cast<float>(static_cast<int8_t>(in_.u8())) / 16.0f;
    }
}

int64_t Interp::rand_dim(int64_t hint) {
    switch (in_.u8() % 8) {
        case 0: return 1;
        case 1: return 1 + in_.u8() % 7;
        case 2: return 1 + in_.u16() % 300;
        default: return hint >= 1 ? hint : 1 + in_.u8() % 64;
    }
}

int32_t Interp::rand_blocksize() {
    switch (in_.u8() % 8) {
        case 0: return static_cast<int32_t>(in_.u32());
        case 1: return 0;
        case 2: return 48;
        default: return 32 << (in_.u8() % 8); // 32 .. 4096
    }
}

// A raw enum value: mostly one of the n valid ones (0..n-1), sometimes not.
int32_t Interp::rand_enum(int32_t n_valid) {
    const uint8_t k = in_.u8();
    if (k < 200) return k % n_valid;
    if (k < 220) return -1;
    if (k < 240) return n_valid;
    return static_cast<int32_t>(in_.u32());
}

std::string Interp::rand_name() {
    switch (in_.u8() % 8) {
        case 0: return "";
        case 1: return "__metadata__";
        case 2: return std::string("bad\xff\xfe utf8");
        case 3: return in_.str(24);
        default: return std::string(1, 't') + static_cast<char>('0' + in_.u8() % 6);
    }
}

std::string Interp::rand_path() {
    const std::string & d = scratch_dir();
    switch (in_.u8() % 8) {
        case 0: return "";
        case 1: return d;                              // a directory
        case 2: return d + "/missing-dir/x.bin";       // no such directory
        case 3: return d + "/";                        // names a directory
        case 4: return "/proc/version/x";              // a file used as a directory
        default: return d + "/abi" + std::to_string(in_.u8() % 3) + ".bin";
    }
}

void Interp::fill(View & v) {
    uint64_t s = seed_ ^ in_.u32();
    const int kind = in_.u8() % 4;
    const size_t es = qlora_dtype_size(v.v.dtype);
    for (size_t i = 0; i < v.mem.size(); ++i) v.mem[i] = static_cast<uint8_t>(splitmix(s));
    if (es == 4 && (v.v.dtype == QLORA_DTYPE_F32) && kind != 0) {
        // Mostly ordinary floats so that finite-only paths run; kind 1 adds a NaN.
        auto * f = reinterpret_cast<float *>(v.mem.data());
        const size_t n = v.mem.size() / 4;
        for (size_t i = 0; i < n; ++i) f[i] = static_cast<float>(static_cast<int64_t>(splitmix(s) % 2001) - 1000) / 250.0f;
        if (kind == 1 && n > 0) f[splitmix(s) % n] = NAN;
    } else if (es == 2 && kind != 0) {
        // F16 / BF16: small finite bit patterns (exponent bits cleared of 0x7C00 / 0x7F80 runs)
        auto * h = reinterpret_cast<uint16_t *>(v.mem.data());
        for (size_t i = 0; i < v.mem.size() / 2; ++i) h[i] = static_cast<uint16_t>(splitmix(s) & 0x3BFF);
    }
}

std::shared_ptr<View> Interp::make_view(int64_t hint_rows, int64_t hint_cols, int32_t preferred) {
    auto view = std::make_shared<View>();
    qlora_view & v = view->v;
    v.device = QLORA_DEVICE_HOST;
    const uint8_t mode = in_.u8();
    int32_t dtype = static_cast<int32_t>(kAllDtypes[in_.u8() % 15]);
    if (in_.u8() % 4 != 0) dtype = preferred >= 0 ? preferred : in_.u8() % 3; // F32, F16, BF16 most of the time
    v.dtype = raw<qlora_dtype>(dtype);
    v.rows = rand_dim(hint_rows);
    v.cols = rand_dim(hint_cols);
    v.stride = (in_.u8() % 4 == 0) ? v.cols + in_.u8() % 5 : 0;
    bool honest = true;
    switch (mode % 24) {
        case 0: view->null_view = true; return view;
        case 1: v.data = nullptr; break;
        case 2: v.rows = -static_cast<int64_t>(in_.u8()); honest = false; break;
        case 3: v.cols = 0; honest = false; break;
        case 4: if (v.cols > 1) { v.stride = 1 + in_.u8() % (v.cols - 1); honest = false; } break;
        case 5: v.dtype = raw<qlora_dtype>(static_cast<int32_t>(in_.u32() | 0x100)); honest = false; break;
        case 6: v.device = static_cast<int32_t>(in_.u8() % 3) == 0 ? -2 : in_.u8() % 8; honest = false; break;
        case 7: // more elements than any call accepts (2^60, or an overflowing product)
            v.rows = INT64_C(1) << 30;
            v.cols = (in_.u8() & 1) ? (INT64_C(1) << 30) : std::numeric_limits<int64_t>::max();
            v.stride = 0;
            honest = false;
            break;
        default: break;
    }
    const size_t es = std::max<size_t>(1, qlora_dtype_size(v.dtype));
    int64_t extent = 1;
    if (honest) {
        const int64_t stride = v.stride == 0 ? v.cols : v.stride;
        if (v.rows * stride > kMaxElems) { // keep it small: shrink the rows
            v.rows = std::max<int64_t>(1, kMaxElems / stride);
            if (v.rows * stride > kMaxElems) { v.cols = std::min<int64_t>(v.cols, kMaxElems); v.stride = 0; v.rows = 1; }
        }
        const int64_t s = v.stride == 0 ? v.cols : v.stride;
        extent = (v.rows - 1) * s + v.cols;
    }
    view->mem.resize(static_cast<size_t>(extent) * es);
    fill(*view);
    if (mode % 24 != 1) v.data = view->mem.data();
    return view;
}

void Interp::put_q4(qlora_q4_tensor_t h) {
    auto q = std::make_shared<Q4>();
    q->h = h;
    q4_[static_cast<size_t>(slot())] = std::move(q);
}

// ---- operations -------------------------------------------------------------

void Interp::op_context() {
    const int s = slot();
    switch (in_.u8() % 4) {
        case 0: {
            qlora_context_params p = qlora_context_default_params();
            p.backend = raw<qlora_backend>(rand_enum(4));
            const int32_t isa = rand_enum(5);
            p.max_isa = raw<qlora_cpu_isa>(isa == 4 ? QLORA_ISA_BEST : isa);
            const uint8_t t = in_.u8() % 6;
            p.n_threads = t == 0 ? 0 : t == 1 ? -1 : t == 2 ? 1025 : t; // valid ones stay <= 5
            p.device = static_cast<int32_t>(in_.u8() % 3) - 1;
            qlora_context_t c = reinterpret_cast<qlora_context_t>(&p);
            const bool null_params = in_.u8() % 16 == 0;
            const qlora_status st = qlora_context_create(null_params ? nullptr : &p, &c);
            check_status(st, "qlora_context_create",
                         {QLORA_ERROR_INVALID_ARGUMENT, QLORA_ERROR_UNSUPPORTED});
            if (st != QLORA_OK) {
                QFUZZ_CHECK(c == reinterpret_cast<qlora_context_t>(&p), "failed create wrote its out-param");
                return;
            }
            qlora_context_free(ctx_[static_cast<size_t>(s)]);
            ctx_[static_cast<size_t>(s)] = c;
            return;
        }
        case 1:
            qlora_context_free(ctx_[static_cast<size_t>(s)]);
            ctx_[static_cast<size_t>(s)] = nullptr;
            return;
        case 2: {
            qlora_context_info info{};
            const qlora_status st = qlora_context_get_info(ctx_[static_cast<size_t>(s)], in_.flag() ? nullptr : &info);
            check_status(st, "qlora_context_get_info", {QLORA_ERROR_INVALID_ARGUMENT});
            if (st == QLORA_OK)
                QFUZZ_CHECK(info.backend != QLORA_BACKEND_AUTO && info.n_threads >= 1, "context info");
            return;
        }
        default: {
            qlora_context_stats stats{};
            check_status(qlora_context_get_stats(ctx_[static_cast<size_t>(s)], in_.flag() ? nullptr : &stats),
                         "qlora_context_get_stats", {QLORA_ERROR_INVALID_ARGUMENT});
            check_status(qlora_context_reset_stats(ctx_[static_cast<size_t>(s)]), "qlora_context_reset_stats",
                         {QLORA_ERROR_INVALID_ARGUMENT});
            return;
        }
    }
}

void Interp::op_q4_quantize() {
    qlora_context_t c = ctx();
    auto src = make_view(0, 64);
    qlora_quant_params p = qlora_quant_default_params();
    p.quant_type = raw<qlora_quant_type>(rand_enum(3));
    p.blocksize = rand_blocksize();
    p.double_quant = static_cast<int32_t>(in_.u8() % 3);
    p.nested_blocksize = rand_blocksize();
    qlora_q4_tensor_t out = reinterpret_cast<qlora_q4_tensor_t>(&p);
    const qlora_status st = qlora_q4_quantize(c, src->ptr(), in_.u8() % 16 == 0 ? nullptr : &p, &out);
    check_status(st, "qlora_q4_quantize", {QLORA_ERROR_INVALID_ARGUMENT, QLORA_ERROR_UNSUPPORTED});
    if (st != QLORA_OK) {
        QFUZZ_CHECK(out == reinterpret_cast<qlora_q4_tensor_t>(&p), "failed quantize wrote its out-param");
        return;
    }
    put_q4(out);
}

void Interp::op_q4_use() {
    qlora_q4_tensor_t t = q4();
    qlora_q4_info info{};
    const qlora_status st = qlora_q4_get_info(t, &info);
    check_status(st, "qlora_q4_get_info", {QLORA_ERROR_INVALID_ARGUMENT});
    if (st == QLORA_OK) {
        QFUZZ_CHECK(info.numel == info.rows * info.cols && info.packed_bytes == (info.numel + 1) / 2 &&
                        info.n_blocks == (info.numel + info.blocksize - 1) / info.blocksize,
                    "q4 info is inconsistent");
        qlora_q4_parts parts{};
        if (check_status(qlora_q4_get_parts(t, &parts), "qlora_q4_get_parts", {}) != QLORA_OK) return;
        touch(parts.packed, static_cast<size_t>(info.packed_bytes));
        touch(parts.code, 64);
        if (info.double_quant) {
            touch(parts.qabsmax, static_cast<size_t>(info.n_blocks));
            touch(parts.nested_absmax, static_cast<size_t>(info.n_nested_blocks) * 4);
            touch(parts.nested_code, 1024);
        } else {
            touch(parts.absmax, static_cast<size_t>(info.n_blocks) * 4);
        }
    }
    switch (in_.u8() % 3) {
        case 0: {
            auto dst = make_view(info.rows, info.cols);
            check_status(qlora_q4_dequantize(ctx(), t, dst->ptr()), "qlora_q4_dequantize",
                         {QLORA_ERROR_INVALID_ARGUMENT, QLORA_ERROR_UNSUPPORTED});
            return;
        }
        case 1: {
            float table[16];
            check_status(qlora_q4_code_table(raw<qlora_quant_type>(rand_enum(3)), in_.flag() ? nullptr : table),
                         "qlora_q4_code_table", {QLORA_ERROR_INVALID_ARGUMENT});
            return;
        }
        default:
            q4_[static_cast<size_t>(slot())].reset();
            return;
    }
}

void Interp::op_q4_from_parts() {
    qlora_quant_params p = qlora_quant_default_params();
    p.quant_type = raw<qlora_quant_type>(rand_enum(3));
    p.blocksize = rand_blocksize();
    p.double_quant = static_cast<int32_t>(in_.u8() % 2);
    p.nested_blocksize = rand_blocksize();
    int64_t rows = rand_dim(0), cols = rand_dim(0);
    if (in_.u8() % 8 == 0) rows = -rows;
    if (in_.u8() % 16 == 0) cols = INT64_C(1) << 40;
    const int32_t od = rand_enum(3);
    // What the header says the parts must hold, when the arguments are valid.
    auto pow2 = [](int32_t b) { return b >= 32 && b <= 4096 && (b & (b - 1)) == 0; };
    int32_t qraw;
    std::memcpy(&qraw, &p.quant_type, 4);
    const bool valid = qraw >= 0 && qraw <= 2 && pow2(p.blocksize) && (!p.double_quant || pow2(p.nested_blocksize)) &&
                       rows >= 1 && cols >= 1 && rows <= (INT64_C(1) << 40) / cols && od >= 0 && od <= 2;
    int64_t numel = 1, nb = 1, nnb = 1;
    if (valid) {
        numel = rows * cols;
        if (numel > kMaxElems) return; // too large to allocate here; not what this exercises
        nb = (numel + p.blocksize - 1) / p.blocksize;
        nnb = p.double_quant ? (nb + p.nested_blocksize - 1) / p.nested_blocksize : 0;
    }
    uint64_t s = seed_ ^ in_.u32();
    std::vector<uint8_t> packed(static_cast<size_t>((numel + 1) / 2)), qabsmax(static_cast<size_t>(nb));
    std::vector<float> absmax(static_cast<size_t>(nb)), nested(static_cast<size_t>(std::max<int64_t>(nnb, 1)));
    std::vector<float> code(16), ncode(256);
    for (auto & b : packed) b = static_cast<uint8_t>(splitmix(s));
    for (auto & b : qabsmax) b = static_cast<uint8_t>(splitmix(s));
    for (auto & f : absmax) f = static_cast<float>(splitmix(s) % 1000) / 100.0f;
    for (auto & f : nested) f = static_cast<float>(splitmix(s) % 1000) / 1000.0f;
    for (size_t i = 0; i < 16; ++i) code[i] = -1.0f + static_cast<float>(i) * (2.0f / 15.0f);
    for (size_t i = 0; i < 256; ++i) ncode[i] = -1.0f + static_cast<float>(i) * (2.0f / 255.0f);
    const uint8_t poison = in_.u8();
    if (poison == 1) code[in_.u8() % 16] = NAN;
    if (poison == 2 && !absmax.empty()) absmax[in_.u8() % absmax.size()] = INFINITY;
    if (poison == 3) ncode[in_.u8()] = NAN;
    if (poison == 4 && !nested.empty()) nested[0] = -NAN;
    qlora_q4_parts parts{};
    parts.packed = in_.u8() % 16 == 0 ? nullptr : packed.data();
    parts.code = in_.u8() % 16 == 0 ? nullptr : code.data();
    if (p.double_quant) {
        parts.qabsmax = in_.u8() % 16 == 0 ? nullptr : qabsmax.data();
        parts.nested_absmax = nested.data();
        parts.nested_code = ncode.data();
        parts.nested_offset = poison == 5 ? NAN : 0.25f;
    } else {
        parts.absmax = in_.u8() % 16 == 0 ? nullptr : absmax.data();
    }
    qlora_q4_tensor_t out = reinterpret_cast<qlora_q4_tensor_t>(&p);
    qlora_context_t c = ctx();
    const bool null_parts = in_.u8() % 16 == 0;
    const qlora_status st = qlora_q4_from_parts(c, rows, cols, &p, raw<qlora_dtype>(od), null_parts ? nullptr : &parts, &out);
    check_status(st, "qlora_q4_from_parts", {QLORA_ERROR_INVALID_ARGUMENT});
    // Accepted exactly when every argument is valid and every table it uses is finite.
    const bool fields = parts.packed && parts.code && (p.double_quant ? parts.qabsmax != nullptr : parts.absmax != nullptr);
    const bool finite = poison != 1 && (p.double_quant ? (poison < 3 || poison > 5) : poison != 2);
    const bool expect_ok = c && valid && !null_parts && fields && finite;
    QFUZZ_CHECK((st == QLORA_OK) == expect_ok, "from_parts returned %s; expected %s (%s)", qlora_status_string(st),
                expect_ok ? "QLORA_OK" : "a refusal", qlora_last_error());
    if (st != QLORA_OK) {
        QFUZZ_CHECK(out == reinterpret_cast<qlora_q4_tensor_t>(&p), "failed from_parts wrote its out-param");
        return;
    }
    put_q4(out);
}

void Interp::op_matmul() {
    qlora_q4_tensor_t w = q4();
    qlora_q4_info info{};
    if (w) check_status(qlora_q4_get_info(w, &info), "qlora_q4_get_info", {});
    qlora_matmul_params p = qlora_matmul_default_params();
    p.op = raw<qlora_matmul_op>(rand_enum(2));
    int32_t op;
    std::memcpy(&op, &p.op, 4);
    if (in_.flag()) p.alpha = rand_float();
    if (in_.flag()) p.beta = rand_float();
    if (in_.flag()) p.int8_x = in_.u8() % 4 == 0 ? static_cast<int32_t>(in_.u8()) - 128 : 1; // 1, or mostly refused
    const int64_t m = 1 + in_.u8() % 12;
    const int64_t k_in = op == 1 ? info.rows : info.cols, k_out = op == 1 ? info.cols : info.rows;
    auto x = make_view(m, k_in);
    auto y = make_view(m, k_out);
    const bool alias = in_.u8() % 32 == 0; // x and y overlapping: must be refused
    qlora_view ya = y->v;
    if (alias && !x->null_view && !x->mem.empty()) ya.data = x->mem.data();
    const qlora_status st = qlora_q4_matmul(ctx(), x->ptr(), w, alias ? &ya : y->ptr(), in_.u8() % 16 == 0 ? nullptr : &p);
    check_status(st, "qlora_q4_matmul", {QLORA_ERROR_INVALID_ARGUMENT, QLORA_ERROR_UNSUPPORTED});
}

void Interp::op_q8() {
    qlora_context_t c = ctx();
    const int32_t bs = rand_blocksize();
    const int64_t n = 1 + in_.u16() % 2048;
    const int64_t nb = bs > 0 ? (n + bs - 1) / bs : 1;
    std::shared_ptr<View> code;
    if (in_.u8() % 4 == 0) code = make_view(1, 256, QLORA_DTYPE_F32);
    if (in_.flag()) {
        auto src = make_view(1, n);
        auto q = make_view(1, n, QLORA_DTYPE_U8);
        auto am = make_view(1, nb, QLORA_DTYPE_F32);
        check_status(qlora_q8_quantize(c, src->ptr(), bs, code ? code->ptr() : nullptr, q->ptr(), am->ptr()),
                     "qlora_q8_quantize", {QLORA_ERROR_INVALID_ARGUMENT});
    } else {
        auto q = make_view(1, n, QLORA_DTYPE_U8);
        auto am = make_view(1, nb, QLORA_DTYPE_F32);
        auto out = make_view(1, n);
        check_status(qlora_q8_dequantize(c, q->ptr(), am->ptr(), bs, code ? code->ptr() : nullptr, out->ptr()),
                     "qlora_q8_dequantize", {QLORA_ERROR_INVALID_ARGUMENT});
    }
    float map[256];
    check_status(qlora_q8_dynamic_map(in_.u8() % 8 == 0 ? nullptr : map), "qlora_q8_dynamic_map",
                 {QLORA_ERROR_INVALID_ARGUMENT});
}

void Interp::op_writer() {
    Writer & w = writer_[static_cast<size_t>(slot())];
    switch (in_.u8() % 6) {
        case 0: {
            qlora_safetensors_writer_free(w.h);
            w = Writer{};
            qlora_safetensors_writer_t h = nullptr;
            check_status(qlora_safetensors_writer_create(in_.u8() % 16 == 0 ? nullptr : &h),
                         "qlora_safetensors_writer_create", {QLORA_ERROR_INVALID_ARGUMENT});
            w.h = h;
            return;
        }
        case 1: {
            const std::string name = rand_name();
            auto data = make_view(0, 0, static_cast<int32_t>(in_.u8() % 15));
            int32_t n_dims = static_cast<int32_t>(in_.u8() % 11) - 1;
            int64_t shape[QLORA_ST_MAX_DIMS + 2] = {};
            // Mostly a shape whose product is the view's element count.
            const int64_t numel = static_cast<int64_t>(static_cast<uint64_t>(data->v.rows) *
                                                       static_cast<uint64_t>(data->v.cols)); // may wrap: only a hint
            for (int d = 0; d < QLORA_ST_MAX_DIMS + 2; ++d) shape[d] = 1;
            if (n_dims >= 1 && n_dims <= QLORA_ST_MAX_DIMS) shape[in_.below(static_cast<uint32_t>(n_dims))] = numel;
            if (in_.u8() % 8 == 0) shape[0] = static_cast<int64_t>(in_.u64());
            const int32_t borrow = static_cast<int32_t>(in_.u8() % 2);
            const qlora_status st = qlora_safetensors_writer_add(w.h, in_.u8() % 32 == 0 ? nullptr : name.c_str(),
                                                                 data->ptr(), n_dims,
                                                                 in_.u8() % 16 == 0 ? nullptr : shape, borrow);
            check_status(st, "qlora_safetensors_writer_add", {QLORA_ERROR_INVALID_ARGUMENT});
            if (st == QLORA_OK && borrow) w.borrowed.push_back(data);
            return;
        }
        case 2: {
            const std::string k = rand_name(), v = rand_name();
            check_status(qlora_safetensors_writer_set_metadata(w.h, in_.u8() % 32 == 0 ? nullptr : k.c_str(),
                                                               in_.u8() % 32 == 0 ? nullptr : v.c_str()),
                         "qlora_safetensors_writer_set_metadata", {QLORA_ERROR_INVALID_ARGUMENT});
            return;
        }
        case 3: {
            auto & q = q4_[static_cast<size_t>(slot())];
            const std::string prefix = in_.flag() ? "m." : rand_name();
            const int32_t borrow = static_cast<int32_t>(in_.u8() % 2);
            const qlora_status st =
                qlora_bnb_add_q4(w.h, prefix.c_str(), q ? q->h : nullptr, borrow);
            check_status(st, "qlora_bnb_add_q4", {QLORA_ERROR_INVALID_ARGUMENT});
            if (st == QLORA_OK && borrow) w.borrowed_q4.push_back(q);
            return;
        }
        default: {
            const std::string path = rand_path();
            const std::vector<std::string> before = list_dir(scratch_dir());
            const qlora_status st = qlora_safetensors_writer_write(w.h, path.c_str());
            check_status(st, "qlora_safetensors_writer_write", {QLORA_ERROR_INVALID_ARGUMENT, QLORA_ERROR_IO});
            if (st != QLORA_OK && w.h != nullptr) {
                // No partial output: the scratch directory holds what it held before (the target
                // may be an existing file from an earlier write, which must be untouched).
                QFUZZ_CHECK(list_dir(scratch_dir()).size() == before.size(), "a failed write left a file behind: %s",
                            qlora_last_error());
            }
            if (st == QLORA_OK) {
                const int r = slot();
                qlora_safetensors_free(reader_[static_cast<size_t>(r)]);
                reader_[static_cast<size_t>(r)] = nullptr;
                qlora_safetensors_params sp = qlora_safetensors_default_params();
                sp.access = raw<qlora_access_hint>(rand_enum(3));
                sp.max_header_bytes = in_.u8() % 8 == 0 ? static_cast<int64_t>(in_.u8()) : sp.max_header_bytes;
                qlora_safetensors_t f = nullptr;
                const qlora_status os = qlora_safetensors_open(path.c_str(), &sp, &f);
                check_status(os, "qlora_safetensors_open", {QLORA_ERROR_INVALID_ARGUMENT, QLORA_ERROR_FORMAT});
                reader_[static_cast<size_t>(r)] = f;
                ++files_;
            }
            return;
        }
    }
}

void Interp::op_reader() {
    qlora_safetensors_t f = reader_[static_cast<size_t>(slot())];
    int64_t count = 0;
    check_status(qlora_safetensors_count(f, &count), "qlora_safetensors_count", {QLORA_ERROR_INVALID_ARGUMENT});
    const int64_t idx = in_.u8() % 4 == 0 ? static_cast<int64_t>(in_.u64()) : static_cast<int64_t>(in_.u8() % 4);
    const bool in_range = f && idx >= 0 && idx < count;
    switch (in_.u8() % 6) {
        case 0: {
            qlora_safetensors_tensor t{};
            const qlora_status st = qlora_safetensors_info(f, idx, &t);
            check_status(st, "qlora_safetensors_info", {QLORA_ERROR_INVALID_ARGUMENT});
            QFUZZ_CHECK((st == QLORA_OK) == in_range, "info(%lld) status %s", static_cast<long long>(idx),
                        qlora_status_string(st));
            return;
        }
        case 1: {
            qlora_view v{};
            const qlora_status st = qlora_safetensors_data(f, idx, &v);
            check_status(st, "qlora_safetensors_data", {QLORA_ERROR_INVALID_ARGUMENT});
            if (st == QLORA_OK) touch(v.data, static_cast<size_t>(v.rows * v.cols) * qlora_dtype_size(v.dtype));
            check_status(qlora_safetensors_prefetch(f, idx), "qlora_safetensors_prefetch",
                         {QLORA_ERROR_INVALID_ARGUMENT});
            check_status(qlora_safetensors_release(f, idx), "qlora_safetensors_release", {QLORA_ERROR_INVALID_ARGUMENT});
            return;
        }
        case 2: {
            const std::string name = rand_name();
            int64_t out = 0;
            check_status(qlora_safetensors_find(f, in_.u8() % 16 == 0 ? nullptr : name.c_str(), &out),
                         "qlora_safetensors_find", {QLORA_ERROR_INVALID_ARGUMENT});
            return;
        }
        case 3: {
            int64_t n = 0;
            check_status(qlora_safetensors_metadata_count(f, &n), "qlora_safetensors_metadata_count",
                         {QLORA_ERROR_INVALID_ARGUMENT});
            const char * k = nullptr;
            const char * v = nullptr;
            check_status(qlora_safetensors_metadata_at(f, idx, &k, in_.flag() ? nullptr : &v),
                         "qlora_safetensors_metadata_at", {QLORA_ERROR_INVALID_ARGUMENT});
            const std::string key = rand_name();
            check_status(qlora_safetensors_metadata_get(f, key.c_str(), &v), "qlora_safetensors_metadata_get",
                         {QLORA_ERROR_INVALID_ARGUMENT});
            return;
        }
        default: {
            const std::string prefix = in_.flag() ? "m." : rand_name();
            qlora_q4_tensor_t out = nullptr;
            const qlora_status st = qlora_bnb_read_q4(ctx(), f, in_.u8() % 32 == 0 ? nullptr : prefix.c_str(), &out);
            check_status(st, "qlora_bnb_read_q4", {QLORA_ERROR_INVALID_ARGUMENT, QLORA_ERROR_FORMAT});
            if (st == QLORA_OK) put_q4(out);
            return;
        }
    }
}

void Interp::op_pager() {
    PagerSlot & ps = pager_[static_cast<size_t>(slot())];
    switch (in_.u8() % 8) {
        case 0: {
            qlora_pager_params p = qlora_pager_default_params();
            p.backing = raw<qlora_pager_backing>(rand_enum(2));
            const uint8_t pb = in_.u8() % 8;
            p.page_bytes = pb == 0 ? 1000 : pb == 1 ? 0 : pb == 2 ? (INT64_C(1) << 31) : (INT64_C(4096) << (pb % 3));
            const uint8_t b = in_.u8() % 6;
            p.budget_bytes = b == 0 ? INT64_MAX : b == 1 ? 0 : b == 2 ? -1 : p.page_bytes * b;
            const std::string dir = [&]() -> std::string {
                switch (in_.u8() % 4) {
                    case 0: return scratch_dir() + "/pager-sub";
                    case 1: return "/proc/version"; // a file, not a directory
                    case 2: return "";
                    default: return scratch_dir();
                }
            }();
            p.spill_dir = dir.c_str();
            qlora_pager_t h = reinterpret_cast<qlora_pager_t>(&p);
            const qlora_status st = qlora_pager_create(&p, &h);
            check_status(st, "qlora_pager_create",
                         {QLORA_ERROR_INVALID_ARGUMENT, QLORA_ERROR_UNSUPPORTED, QLORA_ERROR_IO});
            if (st != QLORA_OK) {
                QFUZZ_CHECK(h == reinterpret_cast<qlora_pager_t>(&p), "failed pager_create wrote its out-param");
                return;
            }
            qlora_pager_free(ps.h);
            ps = PagerSlot{};
            ps.h = h;
            return;
        }
        case 1: {
            const uint8_t k = in_.u8() % 8;
            const int64_t bytes = k == 0 ? 0 : k == 1 ? -5 : k == 2 ? (INT64_C(1) << 47) : 1 + in_.u16() % 20000;
            int64_t id = -7;
            const qlora_status st = qlora_pager_alloc(ps.h, bytes, &id);
            check_status(st, "qlora_pager_alloc", {QLORA_ERROR_INVALID_ARGUMENT});
            if (st == QLORA_OK) {
                QFUZZ_CHECK(id > 0, "alloc gave id %lld", static_cast<long long>(id));
                ps.ids.push_back(id);
            } else {
                QFUZZ_CHECK(id == -7, "failed alloc wrote its out-param");
            }
            return;
        }
        case 2: {
            const int64_t id = ps.ids.empty() || in_.u8() % 8 == 0 ? static_cast<int64_t>(in_.u8()) - 2
                                                                   : ps.ids[in_.below(static_cast<uint32_t>(ps.ids.size()))];
            const int64_t offset = in_.u8() % 4 == 0 ? static_cast<int64_t>(in_.u64()) : in_.u16() % 20000;
            const int64_t bytes = in_.u8() % 4 == 0 ? static_cast<int64_t>(in_.u64()) : 1 + in_.u16() % 5000;
            const int32_t access = rand_enum(3);
            void * p = &ps;
            const qlora_status st = qlora_pager_acquire(ps.h, id, offset, bytes, raw<qlora_pager_access>(access), &p);
            check_status(st, "qlora_pager_acquire", {QLORA_ERROR_INVALID_ARGUMENT, QLORA_ERROR_OUT_OF_MEMORY});
            if (st != QLORA_OK) {
                QFUZZ_CHECK(p == &ps, "failed acquire wrote its out-param");
                return;
            }
            if (access == QLORA_PAGER_READ) touch(p, static_cast<size_t>(bytes));
            else std::memset(p, 0x42, static_cast<size_t>(bytes));
            ps.pins.push_back({id, offset, bytes});
            return;
        }
        case 3: {
            if (!ps.pins.empty() && in_.u8() % 4 != 0) {
                const size_t k = in_.below(static_cast<uint32_t>(ps.pins.size()));
                const Pin pin = ps.pins[k];
                check_status(qlora_pager_release(ps.h, pin.id, pin.offset, pin.bytes), "qlora_pager_release", {});
                ps.pins.erase(ps.pins.begin() + static_cast<std::ptrdiff_t>(k));
            } else {
                check_status(qlora_pager_release(ps.h, static_cast<int64_t>(in_.u8()), in_.u16(), in_.u16()),
                             "qlora_pager_release", {QLORA_ERROR_INVALID_ARGUMENT});
            }
            return;
        }
        case 4: {
            if (ps.ids.empty()) return;
            const size_t k = in_.below(static_cast<uint32_t>(ps.ids.size()));
            const int64_t id = ps.ids[k];
            bool pinned = false;
            for (const Pin & p : ps.pins) pinned = pinned || p.id == id;
            const qlora_status st = qlora_pager_dealloc(ps.h, id);
            check_status(st, "qlora_pager_dealloc", {QLORA_ERROR_INVALID_ARGUMENT});
            QFUZZ_CHECK((st == QLORA_OK) == !pinned, "dealloc of %s allocation: %s", pinned ? "a pinned" : "an unpinned",
                        qlora_status_string(st));
            if (st == QLORA_OK) ps.ids.erase(ps.ids.begin() + static_cast<std::ptrdiff_t>(k));
            return;
        }
        case 5: {
            const int64_t target = in_.u8() % 4 == 0 ? -1 : in_.u16();
            check_status(qlora_pager_trim(ps.h, target), "qlora_pager_trim", {QLORA_ERROR_INVALID_ARGUMENT});
            return;
        }
        case 6: {
            qlora_pager_stats s{};
            const qlora_status st = qlora_pager_get_stats(ps.h, &s);
            check_status(st, "qlora_pager_get_stats", {QLORA_ERROR_INVALID_ARGUMENT});
            if (st == QLORA_OK)
                QFUZZ_CHECK(s.resident_bytes <= s.budget_bytes && s.pinned_bytes <= s.resident_bytes &&
                                s.allocations >= static_cast<int64_t>(ps.ids.size()), // + an optimizer's
                            "pager stats: resident %lld, budget %lld, pinned %lld, allocations %lld (at least %zu)",
                            static_cast<long long>(s.resident_bytes), static_cast<long long>(s.budget_bytes),
                            static_cast<long long>(s.pinned_bytes), static_cast<long long>(s.allocations),
                            ps.ids.size());
            check_status(qlora_pager_reset_stats(ps.h), "qlora_pager_reset_stats", {QLORA_ERROR_INVALID_ARGUMENT});
            return;
        }
        default:
            qlora_pager_free(ps.h);
            ps = PagerSlot{};
            return;
    }
}

void Interp::op_adamw() {
    Opt & o = opt_[static_cast<size_t>(slot())];
    switch (in_.u8() % 6) {
        case 0: {
            qlora_adamw_params p = qlora_adamw_default_params();
            p.state = raw<qlora_optim_state>(rand_enum(2));
            if (in_.u8() % 4 == 0) p.lr = rand_float();
            if (in_.u8() % 8 == 0) p.beta1 = rand_float();
            if (in_.u8() % 8 == 0) p.beta2 = rand_float();
            if (in_.u8() % 8 == 0) p.eps = rand_float();
            if (in_.u8() % 8 == 0) p.weight_decay = rand_float();
            if (in_.u8() % 4 == 0) p.max_grad_norm = rand_float();
            if (in_.u8() % 8 == 0) p.bias_correction = static_cast<int32_t>(in_.u8()) - 1;
            qlora_pager_t pager = in_.flag() ? pager_[static_cast<size_t>(slot())].h : nullptr;
            qlora_adamw_t h = reinterpret_cast<qlora_adamw_t>(&p);
            const qlora_status st = qlora_adamw_create(in_.u8() % 16 == 0 ? nullptr : &p, pager, &h);
            check_status(st, "qlora_adamw_create", {QLORA_ERROR_INVALID_ARGUMENT});
            if (st != QLORA_OK) {
                QFUZZ_CHECK(h == reinterpret_cast<qlora_adamw_t>(&p), "failed adamw_create wrote its out-param");
                return;
            }
            qlora_adamw_free(o.h);
            o = Opt{};
            o.h = h;
            return;
        }
        case 1: {
            const uint8_t k = in_.u8() % 8;
            const int64_t numel = k == 0 ? 0 : k == 1 ? -1 : k == 2 ? (INT64_C(1) << 41) : 1 + in_.u16() % 3000;
            int32_t index = -1;
            const qlora_status st = qlora_adamw_add_buffer(o.h, numel, in_.flag() ? nullptr : &index);
            check_status(st, "qlora_adamw_add_buffer", {QLORA_ERROR_INVALID_ARGUMENT});
            if (st == QLORA_OK) o.sizes.push_back(numel);
            return;
        }
        case 2: {
            qlora_adamw_params p = qlora_adamw_default_params();
            if (o.h) check_status(qlora_adamw_get_params(o.h, &p), "qlora_adamw_get_params", {});
            if (in_.flag()) p.lr = rand_float();
            if (in_.u8() % 4 == 0) p.state = raw<qlora_optim_state>(rand_enum(2));
            if (in_.u8() % 8 == 0) p.beta2 = rand_float();
            check_status(qlora_adamw_set_params(o.h, &p), "qlora_adamw_set_params", {QLORA_ERROR_INVALID_ARGUMENT});
            return;
        }
        case 3: {
            qlora_adamw_info info{};
            const qlora_status st = qlora_adamw_get_info(o.h, &info);
            check_status(st, "qlora_adamw_get_info", {QLORA_ERROR_INVALID_ARGUMENT});
            if (st == QLORA_OK)
                QFUZZ_CHECK(info.n_buffers == static_cast<int32_t>(o.sizes.size()), "adamw info: %d buffers, expected %zu",
                            info.n_buffers, o.sizes.size());
            return;
        }
        case 4: {
            const std::string path = rand_path();
            // After a step failed half-way, save refuses with that step's status.
            check_status(qlora_adamw_save(o.h, path.c_str()), "qlora_adamw_save",
                         {QLORA_ERROR_INVALID_ARGUMENT, QLORA_ERROR_IO, QLORA_ERROR_OUT_OF_MEMORY, QLORA_ERROR_FORMAT});
            return;
        }
        default: {
            const std::string path = rand_path();
            check_status(qlora_adamw_load(o.h, path.c_str()), "qlora_adamw_load",
                         {QLORA_ERROR_INVALID_ARGUMENT, QLORA_ERROR_IO, QLORA_ERROR_FORMAT});
            return;
        }
    }
}

void Interp::op_adamw_step() {
    Opt & o = opt_[static_cast<size_t>(slot())];
    const size_t nb = o.sizes.size();
    std::vector<std::shared_ptr<View>> pv, gv;
    std::vector<qlora_view> p(nb + 1), g(nb + 1);
    for (size_t i = 0; i < nb; ++i) {
        if (in_.u8() % 8 == 0) {
            pv.push_back(make_view(1, o.sizes[i]));
            gv.push_back(make_view(1, o.sizes[i]));
        } else { // honest F32 views of the registered size
            for (auto * list : {&pv, &gv}) {
                auto v = std::make_shared<View>();
                v->mem.resize(static_cast<size_t>(o.sizes[i]) * 4);
                auto * f = reinterpret_cast<float *>(v->mem.data());
                for (int64_t k = 0; k < o.sizes[i]; ++k) f[k] = static_cast<float>((k * 37 + i) % 19) * 0.01f - 0.09f;
                v->v = {v->mem.data(), QLORA_DTYPE_F32, QLORA_DEVICE_HOST, 1, o.sizes[i], 0};
                list->push_back(v);
            }
        }
        p[i] = pv.back()->null_view ? qlora_view{} : pv.back()->v;
        g[i] = gv.back()->null_view ? qlora_view{} : gv.back()->v;
    }
    if (nb > 1 && in_.u8() % 16 == 0) g[1] = p[0]; // overlap: must be refused
    int32_t n = static_cast<int32_t>(nb);
    if (in_.u8() % 8 == 0) n = static_cast<int32_t>(in_.u8() % 4) - 1;
    if (n > static_cast<int32_t>(nb)) n = static_cast<int32_t>(nb); // the arrays hold nb views: more is a caller lie
    qlora_adamw_step_info info{};
    const qlora_status st = qlora_adamw_step(ctx(), o.h, in_.u8() % 16 == 0 ? nullptr : p.data(),
                                             in_.u8() % 16 == 0 ? nullptr : g.data(), n, in_.flag() ? nullptr : &info);
    // OUT_OF_MEMORY: the harness holds pins in the optimizer's pager, so the step cannot pin its pages.
    check_status(st, "qlora_adamw_step",
                 {QLORA_ERROR_INVALID_ARGUMENT, QLORA_ERROR_OUT_OF_MEMORY, QLORA_ERROR_IO, QLORA_ERROR_FORMAT});
}

void Interp::op_misc() {
    switch (in_.u8() % 6) {
        case 0: {
            const char * s = qlora_status_string(raw<qlora_status>(static_cast<int32_t>(in_.u32())));
            QFUZZ_CHECK(s != nullptr && s[0] != '\0', "status_string");
            return;
        }
        case 1: {
            const int32_t d = static_cast<int32_t>(in_.u32()) % 32;
            const size_t n = qlora_dtype_size(raw<qlora_dtype>(d));
            QFUZZ_CHECK(n == 0 || n == 1 || n == 2 || n == 4 || n == 8, "dtype_size(%d) = %zu", d, n);
            return;
        }
        case 2: {
            const char * s = qlora_cpu_isa_name(raw<qlora_cpu_isa>(static_cast<int32_t>(in_.u32())));
            QFUZZ_CHECK(s != nullptr, "cpu_isa_name");
            return;
        }
        case 3: {
            const std::string a = in_.flag() ? "qlora_view" : in_.str(20);
            size_t out = 0;
            check_status(qlora_abi_struct_size(in_.u8() % 16 == 0 ? nullptr : a.c_str(), &out), "qlora_abi_struct_size",
                         {QLORA_ERROR_INVALID_ARGUMENT});
            const std::string f = in_.flag() ? "rows" : in_.str(12);
            check_status(qlora_abi_field_offset(a.c_str(), in_.u8() % 16 == 0 ? nullptr : f.c_str(), &out),
                         "qlora_abi_field_offset", {QLORA_ERROR_INVALID_ARGUMENT});
            return;
        }
        case 4: {
            const std::string c = in_.flag() ? "QLORA_ERROR_IO" : in_.str(20);
            int64_t v = 0;
            check_status(qlora_abi_enum_value(c.c_str(), in_.u8() % 16 == 0 ? nullptr : &v), "qlora_abi_enum_value",
                         {QLORA_ERROR_INVALID_ARGUMENT});
            return;
        }
        default:
            QFUZZ_CHECK(qlora_version() != nullptr && qlora_abi_version() == QLORA_ABI_VERSION, "version");
            return;
    }
}

// Every function that takes a handle, with NULL: INVALID_ARGUMENT, never a crash.
void Interp::op_null_handles() {
    const qlora_status inv = QLORA_ERROR_INVALID_ARGUMENT;
    auto expect_invalid = [&](qlora_status st, const char * call) {
        check_status(st, call, {inv});
        QFUZZ_CHECK(st == inv, "%s with a NULL handle returned %s", call, qlora_status_string(st));
    };
    float f16[16];
    qlora_view v{f16, QLORA_DTYPE_F32, QLORA_DEVICE_HOST, 1, 16, 0};
    qlora_quant_params qp = qlora_quant_default_params();
    qlora_q4_tensor_t q = nullptr;
    qlora_q4_info qi;
    qlora_q4_parts parts{};
    qlora_matmul_params mp = qlora_matmul_default_params();
    int64_t i64 = 0;
    int32_t i32 = 0;
    const char * s = nullptr;
    qlora_safetensors_tensor st{};
    qlora_pager_stats ps{};
    qlora_adamw_params ap = qlora_adamw_default_params();
    qlora_adamw_info ai{};
    qlora_llama2c_config lc{};
    float score = 0;
    void * p = nullptr;
    qlora_context_t c = ctx_[0];
    switch (in_.u8() % 8) {
        case 0:
            expect_invalid(qlora_q4_quantize(nullptr, &v, &qp, &q), "qlora_q4_quantize");
            expect_invalid(qlora_q4_dequantize(c, nullptr, &v), "qlora_q4_dequantize");
            expect_invalid(qlora_q4_get_info(nullptr, &qi), "qlora_q4_get_info");
            expect_invalid(qlora_q4_get_parts(nullptr, &parts), "qlora_q4_get_parts");
            expect_invalid(qlora_q4_from_parts(nullptr, 1, 16, &qp, QLORA_DTYPE_F32, &parts, &q), "qlora_q4_from_parts");
            return;
        case 1:
            expect_invalid(qlora_q4_matmul(c, &v, nullptr, &v, &mp), "qlora_q4_matmul");
            expect_invalid(qlora_q8_quantize(nullptr, &v, 64, nullptr, &v, &v), "qlora_q8_quantize");
            expect_invalid(qlora_q8_dequantize(nullptr, &v, &v, 64, nullptr, &v), "qlora_q8_dequantize");
            expect_invalid(qlora_context_get_info(nullptr, nullptr), "qlora_context_get_info");
            return;
        case 2:
            expect_invalid(qlora_safetensors_count(nullptr, &i64), "qlora_safetensors_count");
            expect_invalid(qlora_safetensors_info(nullptr, 0, &st), "qlora_safetensors_info");
            expect_invalid(qlora_safetensors_find(nullptr, "x", &i64), "qlora_safetensors_find");
            expect_invalid(qlora_safetensors_data(nullptr, 0, &v), "qlora_safetensors_data");
            expect_invalid(qlora_safetensors_prefetch(nullptr, 0), "qlora_safetensors_prefetch");
            expect_invalid(qlora_safetensors_release(nullptr, 0), "qlora_safetensors_release");
            expect_invalid(qlora_safetensors_metadata_count(nullptr, &i64), "qlora_safetensors_metadata_count");
            expect_invalid(qlora_safetensors_metadata_at(nullptr, 0, &s, &s), "qlora_safetensors_metadata_at");
            expect_invalid(qlora_safetensors_metadata_get(nullptr, "k", &s), "qlora_safetensors_metadata_get");
            return;
        case 3:
            expect_invalid(qlora_safetensors_writer_add(nullptr, "t", &v, 1, &i64, 0), "qlora_safetensors_writer_add");
            expect_invalid(qlora_safetensors_writer_set_metadata(nullptr, "k", "v"),
                           "qlora_safetensors_writer_set_metadata");
            expect_invalid(qlora_safetensors_writer_write(nullptr, "x"), "qlora_safetensors_writer_write");
            expect_invalid(qlora_bnb_add_q4(nullptr, "p.", nullptr, 0), "qlora_bnb_add_q4");
            expect_invalid(qlora_bnb_read_q4(c, nullptr, "p.", &q), "qlora_bnb_read_q4");
            expect_invalid(qlora_bnb_parse_quant_state(nullptr, nullptr), "qlora_bnb_parse_quant_state");
            return;
        case 4:
            expect_invalid(qlora_llama2c_model_config(nullptr, &lc), "qlora_llama2c_model_config");
            expect_invalid(qlora_llama2c_model_weight(nullptr, QLORA_LLAMA2C_WQ, 0, &v), "qlora_llama2c_model_weight");
            expect_invalid(qlora_llama2c_tokenizer_info(nullptr, &i32, &i32), "qlora_llama2c_tokenizer_info");
            expect_invalid(qlora_llama2c_tokenizer_token(nullptr, 0, &s, &i32, &score), "qlora_llama2c_tokenizer_token");
            expect_invalid(qlora_llama2c_model_open(nullptr, nullptr), "qlora_llama2c_model_open");
            expect_invalid(qlora_llama2c_tokenizer_open(nullptr, 0, nullptr), "qlora_llama2c_tokenizer_open");
            expect_invalid(qlora_safetensors_open(nullptr, nullptr, nullptr), "qlora_safetensors_open");
            expect_invalid(qlora_safetensors_open_index(nullptr, nullptr, nullptr), "qlora_safetensors_open_index");
            return;
        case 5:
            expect_invalid(qlora_pager_alloc(nullptr, 16, &i64), "qlora_pager_alloc");
            expect_invalid(qlora_pager_dealloc(nullptr, 1), "qlora_pager_dealloc");
            expect_invalid(qlora_pager_acquire(nullptr, 1, 0, 1, QLORA_PAGER_READ, &p), "qlora_pager_acquire");
            expect_invalid(qlora_pager_release(nullptr, 1, 0, 1), "qlora_pager_release");
            expect_invalid(qlora_pager_trim(nullptr, 0), "qlora_pager_trim");
            expect_invalid(qlora_pager_get_stats(nullptr, &ps), "qlora_pager_get_stats");
            expect_invalid(qlora_pager_reset_stats(nullptr), "qlora_pager_reset_stats");
            expect_invalid(qlora_pager_create(nullptr, nullptr), "qlora_pager_create");
            return;
        case 6:
            expect_invalid(qlora_adamw_add_buffer(nullptr, 10, nullptr), "qlora_adamw_add_buffer");
            expect_invalid(qlora_adamw_set_params(nullptr, &ap), "qlora_adamw_set_params");
            expect_invalid(qlora_adamw_get_params(nullptr, &ap), "qlora_adamw_get_params");
            expect_invalid(qlora_adamw_get_info(nullptr, &ai), "qlora_adamw_get_info");
            expect_invalid(qlora_adamw_step(c, nullptr, &v, &v, 1, nullptr), "qlora_adamw_step");
            expect_invalid(qlora_adamw_save(nullptr, "x"), "qlora_adamw_save");
            expect_invalid(qlora_adamw_load(nullptr, "x"), "qlora_adamw_load");
            expect_invalid(qlora_adamw_create(nullptr, nullptr, nullptr), "qlora_adamw_create");
            return;
        default:
            // Every _free takes NULL.
            qlora_context_free(nullptr);
            qlora_q4_free(nullptr);
            qlora_safetensors_free(nullptr);
            qlora_safetensors_writer_free(nullptr);
            qlora_llama2c_model_free(nullptr);
            qlora_llama2c_tokenizer_free(nullptr);
            qlora_pager_free(nullptr);
            qlora_adamw_free(nullptr);
            expect_invalid(qlora_context_create(nullptr, nullptr), "qlora_context_create");
            expect_invalid(qlora_safetensors_writer_create(nullptr), "qlora_safetensors_writer_create");
            return;
    }
}

void Interp::run() {
    // Start with one ordinary context so that most inputs reach the ops.
    qlora_context_params cp = qlora_context_default_params();
    cp.n_threads = 1 + in_.u8() % 3;
    check_status(qlora_context_create(&cp, &ctx_[0]), "qlora_context_create", {});
    // ... and, on request, a pager, a 4-bit tensor and an optimizer, so that short
    // inputs reach the calls that need them.
    const uint8_t start = in_.u8();
    if (start & 1) {
        qlora_pager_params pp = qlora_pager_default_params();
        pp.page_bytes = 4096;
        pp.budget_bytes = 4096 * (1 + (start >> 4) % 4);
        pp.spill_dir = scratch_dir().c_str();
        check_status(qlora_pager_create(&pp, &pager_[0].h), "qlora_pager_create", {});
    }
    if (start & 2) {
        std::vector<float> w(static_cast<size_t>(8 * 96));
        for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(static_cast<int>(i * 7919 % 61) - 30) / 17.0f;
        qlora_view v{w.data(), QLORA_DTYPE_F32, QLORA_DEVICE_HOST, 8, 96, 0};
        qlora_quant_params qp = qlora_quant_default_params();
        qp.blocksize = 32;
        qp.double_quant = (start >> 2) & 1;
        qlora_q4_tensor_t q = nullptr;
        check_status(qlora_q4_quantize(ctx_[0], &v, &qp, &q), "qlora_q4_quantize", {});
        q4_[0] = std::make_shared<Q4>();
        q4_[0]->h = q;
    }
    if (start & 8) {
        qlora_adamw_params ap = qlora_adamw_default_params();
        ap.state = (start & 32) ? QLORA_OPTIM_STATE_8BIT : QLORA_OPTIM_STATE_F32;
        check_status(qlora_adamw_create(&ap, (start & 64) ? pager_[0].h : nullptr, &opt_[0].h), "qlora_adamw_create", {});
        check_status(qlora_adamw_add_buffer(opt_[0].h, 300, nullptr), "qlora_adamw_add_buffer", {});
        opt_[0].sizes.push_back(300);
    }
    for (int steps = 0; !in_.empty() && steps < 64; ++steps) {
        switch (in_.u8() % 15) {
            case 0: op_context(); break;
            case 1: case 2: op_q4_quantize(); break;
            case 3: op_q4_use(); break;
            case 4: op_q4_from_parts(); break;
            case 5: op_matmul(); break;
            case 6: op_q8(); break;
            case 7: case 8: op_writer(); break;
            case 9: op_reader(); break;
            case 10: op_pager(); break;
            case 11: op_adamw(); break;
            case 12: op_adamw_step(); break;
            case 13: op_misc(); break;
            default: op_null_handles(); break;
        }
    }
    // Pins are released before the pagers go (not required, but keeps LSan's view simple).
    for (auto & ps : pager_)
        for (const Pin & p : ps.pins) qlora_pager_release(ps.h, p.id, p.offset, p.bytes);
}

} // namespace

int qfuzz_abi(const uint8_t * data, size_t size) {
    Interp interp(data, size);
    interp.run();
    return 0;
}

} // namespace qfuzz

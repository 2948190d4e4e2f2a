/*
 * qlora.h -- the ONLY public header of the QLoRA native core.
 *
 * A flat C ABI. Conventions (every addition must follow them; the C# bindings
 * in bindings/QLoRA.Native/Generated/ are generated from this file):
 *  - prefix `qlora_`, export macro QLORA_API, opaque handles
 *    `typedef struct qlora_x * qlora_x_t;` with `_create`/`_free` pairs
 *    (or a producing call such as `qlora_q4_quantize` plus `qlora_q4_free`);
 *  - every fallible call returns `qlora_status`; results go to out-params;
 *    on failure `qlora_last_error()` holds a thread-local message naming the
 *    problem, and out-params are left untouched;
 *  - parameter structs are passed by pointer and come with a
 *    `qlora_*_default_params()` that returns a filled-in value;
 *  - no `bool` (its size differs between C, C++ and .NET marshalling): flags
 *    are int32_t, 0 = off, non-zero = on;
 *  - arrays cross the boundary as `qlora_view` descriptors (data pointer,
 *    dtype, shape, device), never as bare pointer + int pairs;
 *  - no call ever aborts, exits or lets a C++ exception or CUDA error escape.
 *
 * Ownership: a handle returned through an out-param belongs to the caller,
 * who frees it with the matching `_free` (which accepts NULL). Pointers
 * returned as views (`qlora_q4_get_parts`) are valid as long as the handle
 * they came from is alive and unmodified.
 *
 * Thread safety: handles may be used from several threads as long as no two
 * threads use the same context at the same time; `qlora_last_error()` is
 * per thread.
 */
#ifndef QLORA_H
#define QLORA_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#  if defined(QLORA_BUILD)
#    define QLORA_API __declspec(dllexport)
#  else
#    define QLORA_API __declspec(dllimport)
#  endif
#else
#  define QLORA_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever a struct layout, enum value or signature changes. */
#define QLORA_ABI_VERSION 1

/* ------------------------------------------------------------------------ */
/* Status and errors                                                        */
/* ------------------------------------------------------------------------ */

typedef enum qlora_status {
    QLORA_OK                     = 0,
    QLORA_ERROR_INVALID_ARGUMENT = 1, /* null pointer, bad size, bad enum, NaN where forbidden */
    QLORA_ERROR_OUT_OF_MEMORY    = 2, /* host or device allocation failed (message has the sizes) */
    QLORA_ERROR_BUFFER_TOO_SMALL = 3, /* caller's buffer cannot hold the result */
    QLORA_ERROR_UNSUPPORTED      = 4, /* backend, ISA or feature not available in this build/machine */
    QLORA_ERROR_IO               = 5, /* file system error (message has the path and errno text) */
    QLORA_ERROR_FORMAT           = 6, /* malformed or inconsistent file/JSON contents */
    QLORA_ERROR_CUDA             = 7, /* CUDA runtime error (message has the CUDA error string) */
    QLORA_ERROR_INTERNAL         = 8  /* a bug: unexpected exception inside the core */
} qlora_status;

/* Static string naming a status ("QLORA_OK", ...). Never NULL. */
QLORA_API const char * qlora_status_string(qlora_status status);

/* Message of the last failed call on this thread ("" if none).
 * Valid until the next qlora_* call on the same thread. */
QLORA_API const char * qlora_last_error(void);

/* Version string of the library, e.g. "0.1.0". Never NULL. */
QLORA_API const char * qlora_version(void);

/* The QLORA_ABI_VERSION the library was built with. */
QLORA_API int32_t qlora_abi_version(void);

/* ------------------------------------------------------------------------ */
/* Element types and array views                                            */
/* ------------------------------------------------------------------------ */

typedef enum qlora_dtype {
    QLORA_DTYPE_F32  = 0,
    QLORA_DTYPE_F16  = 1,
    QLORA_DTYPE_BF16 = 2,
    QLORA_DTYPE_U8   = 3,
    QLORA_DTYPE_I32  = 4,
    QLORA_DTYPE_I64  = 5,
    QLORA_DTYPE_F64  = 6
} qlora_dtype;

/* Size in bytes of one element of `dtype` (0 for an unknown value). */
QLORA_API size_t qlora_dtype_size(qlora_dtype dtype);

/* Device value of memory that lives on the host. */
#define QLORA_DEVICE_HOST (-1)

/* A non-owning, row-major 2-D view of caller memory. A flat array of n
 * elements is rows = 1, cols = n. `stride` is the distance between row
 * starts in elements (0 means `cols`, i.e. contiguous). The memory must
 * stay valid for the duration of the call that receives the view. */
typedef struct qlora_view {
    void *      data;
    qlora_dtype dtype;
    int32_t     device; /* QLORA_DEVICE_HOST or a CUDA device ordinal */
    int64_t     rows;
    int64_t     cols;
    int64_t     stride;
} qlora_view;

/* ------------------------------------------------------------------------ */
/* Contexts: backend choice, thread pool, CUDA stream                        */
/* ------------------------------------------------------------------------ */

typedef enum qlora_backend {
    QLORA_BACKEND_AUTO = 0, /* CUDA for device views when built with it, else CPU */
    QLORA_BACKEND_REF  = 1, /* scalar reference ("oracle"), single-threaded */
    QLORA_BACKEND_CPU  = 2, /* SIMD + threads, runtime-dispatched ISA */
    QLORA_BACKEND_CUDA = 3
} qlora_backend;

/* Instruction-set levels of the CPU backend, in increasing order. */
typedef enum qlora_cpu_isa {
    QLORA_ISA_SCALAR      = 0, /* portable C++ */
    QLORA_ISA_AVX2        = 1, /* AVX2 + FMA + F16C */
    QLORA_ISA_AVX512      = 2, /* AVX-512 F/BW/DQ/VL */
    QLORA_ISA_AVX512_BF16 = 3, /* AVX-512 + BF16 dot products (vdpbf16ps) */
    QLORA_ISA_BEST        = 100 /* whatever the running CPU supports */
} qlora_cpu_isa;

/* Highest ISA level the running CPU (and OS) supports. */
QLORA_API qlora_cpu_isa qlora_cpu_isa_detected(void);

/* Static name of an ISA level ("avx512_bf16", ...). Never NULL. */
QLORA_API const char * qlora_cpu_isa_name(qlora_cpu_isa isa);

typedef struct qlora_context * qlora_context_t;

typedef struct qlora_context_params {
    qlora_backend backend;   /* default QLORA_BACKEND_AUTO */
    qlora_cpu_isa max_isa;   /* cap for the CPU backend; default QLORA_ISA_BEST.
                                Asking for more than the CPU has is an error. */
    int32_t       n_threads; /* CPU worker threads incl. the caller; 0 = all cores */
    int32_t       device;    /* CUDA device ordinal for QLORA_BACKEND_CUDA; default 0 */
} qlora_context_params;

QLORA_API qlora_context_params qlora_context_default_params(void);

/* Creates a context. Fails with UNSUPPORTED if the backend or ISA asked for
 * is not available here. */
QLORA_API qlora_status qlora_context_create(const qlora_context_params * params, qlora_context_t * out);
QLORA_API void         qlora_context_free(qlora_context_t ctx);

/* What a context resolved to. */
typedef struct qlora_context_info {
    qlora_backend backend;   /* never AUTO */
    qlora_cpu_isa isa;       /* ISA the CPU kernels use (SCALAR for REF) */
    int32_t       n_threads;
    int32_t       device;
} qlora_context_info;

QLORA_API qlora_status qlora_context_get_info(qlora_context_t ctx, qlora_context_info * out);

/* ------------------------------------------------------------------------ */
/* 4-bit tensors (NF4 / FP4, bitsandbytes layout)                            */
/* ------------------------------------------------------------------------ */

typedef enum qlora_quant_type {
    QLORA_QUANT_NF4 = 0,
    QLORA_QUANT_FP4 = 1
} qlora_quant_type;

typedef struct qlora_quant_params {
    qlora_quant_type quant_type;       /* default NF4 */
    int32_t          blocksize;        /* default 64; a power of two in [32, 4096] */
    int32_t          double_quant;     /* default 1: 8-bit quantized block scales */
    int32_t          nested_blocksize; /* default 256; a power of two in [32, 4096] */
} qlora_quant_params;

QLORA_API qlora_quant_params qlora_quant_default_params(void);

/* A frozen 4-bit weight matrix [rows = out_features, cols = in_features]. */
typedef struct qlora_q4_tensor * qlora_q4_tensor_t;

typedef struct qlora_q4_info {
    int64_t          rows;
    int64_t          cols;
    int64_t          numel;
    qlora_quant_type quant_type;
    int32_t          blocksize;
    int64_t          n_blocks;          /* ceil(numel / blocksize) */
    int32_t          double_quant;
    int32_t          nested_blocksize;
    int64_t          n_nested_blocks;   /* ceil(n_blocks / nested_blocksize), 0 without DQ */
    float            nested_offset;     /* mean of the fp32 absmax (DQ only) */
    qlora_dtype      orig_dtype;        /* dtype the tensor was quantized from */
    int32_t          device;            /* QLORA_DEVICE_HOST or a CUDA ordinal */
    int64_t          packed_bytes;      /* (numel + 1) / 2 */
    int64_t          storage_bytes;     /* packed + scales + nested scales + offset */
} qlora_q4_info;

/* The raw parts of a 4-bit tensor in bitsandbytes' checkpoint layout
 * (see FORMATS.md). With double_quant, `qabsmax`/`nested_absmax`/
 * `nested_code`/`nested_offset` are used and `absmax` is NULL; without it,
 * `absmax` is used and the nested fields are NULL / 0. */
typedef struct qlora_q4_parts {
    const uint8_t * packed;        /* [(numel + 1) / 2], high nibble = even element */
    const float *   absmax;        /* [n_blocks] fp32 scales (no DQ) */
    const uint8_t * qabsmax;       /* [n_blocks] 8-bit scales (DQ) */
    const float *   nested_absmax; /* [n_nested_blocks] (DQ) */
    const float *   code;          /* [16] the 4-bit code table (quant_map) */
    const float *   nested_code;   /* [256] the 8-bit map (nested_quant_map, DQ) */
    float           nested_offset; /* (DQ) */
} qlora_q4_parts;

/* Quantizes `src` (F32, F16 or BF16; rows x cols) into a new 4-bit tensor.
 * NaN or Inf in `src` is INVALID_ARGUMENT (message has the element index). */
QLORA_API qlora_status qlora_q4_quantize(qlora_context_t ctx, const qlora_view * src,
                                         const qlora_quant_params * params, qlora_q4_tensor_t * out);

/* Dequantizes the whole tensor into `dst` (F32, F16 or BF16; rows x cols). */
QLORA_API qlora_status qlora_q4_dequantize(qlora_context_t ctx, qlora_q4_tensor_t tensor, const qlora_view * dst);

/* Builds a tensor from raw parts (e.g. read from a bitsandbytes checkpoint)
 * without re-quantizing; the parts are copied. `orig_dtype` is recorded. */
QLORA_API qlora_status qlora_q4_from_parts(qlora_context_t ctx, int64_t rows, int64_t cols,
                                           const qlora_quant_params * params, qlora_dtype orig_dtype,
                                           const qlora_q4_parts * parts, qlora_q4_tensor_t * out);

QLORA_API qlora_status qlora_q4_get_info(qlora_q4_tensor_t tensor, qlora_q4_info * out);

/* Views of the host storage; valid while `tensor` lives. Device tensors:
 * UNSUPPORTED (copy to the host first). */
QLORA_API qlora_status qlora_q4_get_parts(qlora_q4_tensor_t tensor, qlora_q4_parts * out);

QLORA_API void qlora_q4_free(qlora_q4_tensor_t tensor);

/* The 16-entry code table of a quant type, as bitsandbytes defines it. */
QLORA_API qlora_status qlora_q4_code_table(qlora_quant_type quant_type, float * out16);

/* ------------------------------------------------------------------------ */
/* 8-bit blockwise quantization with the signed dynamic map                  */
/* ------------------------------------------------------------------------ */

/* bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7,
 * total_bits=8): 256 sorted values from -0.9929... to 1.0. */
QLORA_API qlora_status qlora_q8_dynamic_map(float * out256);

/* Blockwise 8-bit quantization of `src` (F32, any shape, contiguous):
 * absmax[b] = max |x| over block b; q = nearest map entry to x / absmax[b]
 * (bitsandbytes' dQuantize). `q`: U8 with src's element count; `absmax`: F32
 * with ceil(n / blocksize) elements. `code` may be NULL (signed dynamic map)
 * or an F32 view of 256 sorted values. */
QLORA_API qlora_status qlora_q8_quantize(qlora_context_t ctx, const qlora_view * src, int32_t blocksize,
                                         const qlora_view * code, const qlora_view * q, const qlora_view * absmax);

/* out = code[q] * absmax[block]; `out` F32 with q's element count. */
QLORA_API qlora_status qlora_q8_dequantize(qlora_context_t ctx, const qlora_view * q, const qlora_view * absmax,
                                           int32_t blocksize, const qlora_view * code, const qlora_view * out);

/* ------------------------------------------------------------------------ */
/* Fused 4-bit matmul (the frozen linear layers) and scratch statistics     */
/* ------------------------------------------------------------------------ */

/* Which product qlora_q4_matmul computes; W is a 4-bit tensor
 * [N = out_features, K = in_features]. */
typedef enum qlora_matmul_op {
    QLORA_MATMUL_FORWARD  = 0, /* y[M,N] = alpha * x[M,K] . W^T + beta * y   (Y = X W^T)   */
    QLORA_MATMUL_BACKWARD = 1  /* y[M,K] = alpha * x[M,N] . W   + beta * y   (dX = dY W)   */
} qlora_matmul_op;

/* Parameters of qlora_q4_matmul (qlora_matmul_default_params fills them in). */
typedef struct qlora_matmul_params {
    qlora_matmul_op op;    /* default QLORA_MATMUL_FORWARD */
    float           alpha; /* default 1; finite. 0 leaves x and W unread: y = beta * y */
    float           beta;  /* default 0; finite. 0: y is write-only (NaN/Inf already in y are
                              not propagated); 1: accumulate into y (e.g. a LoRA branch) */
} qlora_matmul_params;

QLORA_API qlora_matmul_params qlora_matmul_default_params(void);

/* Fused matmul with a 4-bit weight that is never dequantized as a whole: W is
 * decoded panel by panel into per-thread tiles (or registers, for M <= 8), so
 * the extra memory is bounded by the tile sizes, not by N*K (see
 * qlora_context_get_stats).
 *  - x, y: host views, F32 or BF16 each (they may differ), any row stride
 *    >= cols (e.g. a TorchSharp tensor's memory, used in place). x and y must
 *    not overlap. Shapes: see qlora_matmul_op; M, N, K >= 1.
 *  - Accumulation is fp32. W is decoded to fp32 exactly as
 *    qlora_q4_dequantize does, except with BF16 x, M > 8 and a CPU with
 *    AVX512-BF16: then W is rounded to bf16 in the tiles (as bitsandbytes does
 *    with a bf16 compute dtype) and multiplied with bf16 dot products.
 *    Elsewhere BF16 x is widened to fp32 (exactly). A BF16 y is rounded to
 *    nearest even from the fp32 result.
 *  - Deterministic: the same inputs, backend, ISA and thread count give the
 *    same bits; the CPU backend's result does not depend on the thread count.
 *  - The REF backend is the scalar oracle (float64 accumulation). */
QLORA_API qlora_status qlora_q4_matmul(qlora_context_t ctx, const qlora_view * x, qlora_q4_tensor_t w,
                                       const qlora_view * y, const qlora_matmul_params * params);

/* Scratch memory a context owns: per-thread tiles that kernels reuse between
 * calls on that context. */
typedef struct qlora_context_stats {
    int64_t scratch_bytes;      /* scratch held now (kept between calls for reuse) */
    int64_t scratch_peak_bytes; /* high-water mark of scratch_bytes since creation or the last reset */
} qlora_context_stats;

QLORA_API qlora_status qlora_context_get_stats(qlora_context_t ctx, qlora_context_stats * out);

/* Releases the scratch the context holds and restarts the high-water mark at 0. */
QLORA_API qlora_status qlora_context_reset_stats(qlora_context_t ctx);

/* ------------------------------------------------------------------------ */
/* ABI introspection                                                         */
/* ------------------------------------------------------------------------ */
/* The library's own answers about the layout of this header's types, so that
 * bindings in other languages can check theirs (the C# binding tests do).
 * Implemented by native/src/core/abi_layout.gen.cpp, which tools/BindingGen
 * generates from this header. Names are the C spellings. An unknown name is
 * INVALID_ARGUMENT. */

/* sizeof of a named type: a struct, an enum, an opaque handle or a callback
 * typedef (e.g. "qlora_view"). */
QLORA_API qlora_status qlora_abi_struct_size(const char * type_name, size_t * out);

/* offsetof(type_name, field_name), e.g. ("qlora_view", "rows"). */
QLORA_API qlora_status qlora_abi_field_offset(const char * type_name, const char * field_name, size_t * out);

/* Value of an enum constant or an integer #define of this header
 * (e.g. "QLORA_ERROR_IO", "QLORA_DEVICE_HOST"). */
QLORA_API qlora_status qlora_abi_enum_value(const char * constant_name, int64_t * out);

#ifdef __cplusplus
}
#endif

#endif /* QLORA_H */

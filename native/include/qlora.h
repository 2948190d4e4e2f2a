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
    QLORA_DTYPE_F64  = 6,
    /* Storage-only types (files, views; no arithmetic ops take them). */
    QLORA_DTYPE_I8      = 7,
    QLORA_DTYPE_I16     = 8,
    QLORA_DTYPE_U16     = 9,
    QLORA_DTYPE_U32     = 10,
    QLORA_DTYPE_U64     = 11,
    QLORA_DTYPE_BOOL    = 12, /* one byte, 0 or 1 */
    QLORA_DTYPE_F8_E4M3 = 13,
    QLORA_DTYPE_F8_E5M2 = 14
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
    QLORA_ISA_AVX512_BF16 = 3, /* AVX-512 + BF16 dot products (vdpbf16ps) + VNNI (vpdpbusd) */
    QLORA_ISA_AMX_BF16    = 4, /* AVX512_BF16 + AMX-BF16 tiles (tdpbf16ps; Linux grants the tile
                                  state to the process on first detection) */
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
    QLORA_QUANT_NF4  = 0, /* bitsandbytes NormalFloat4 */
    QLORA_QUANT_FP4  = 1, /* bitsandbytes FP4 (E2M1 variant) */
    QLORA_QUANT_INT4 = 2  /* symmetric absmax Int4 (the QLoRA paper's baseline): value(i) = (i - 8) / 7,
                             q = clamp(round_half_even(x / absmax * 7), -7, 7) + 8; it has no
                             bitsandbytes checkpoint form (docs/quantization.md) */
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

/* The 16-entry code table of a quant type: NF4/FP4 as bitsandbytes defines them,
 * INT4 as (i - 8) / 7 in fp32. */
QLORA_API qlora_status qlora_q4_code_table(qlora_quant_type quant_type, float * out16);

/* ------------------------------------------------------------------------ */
/* 8-bit blockwise quantization with the signed dynamic map                  */
/* ------------------------------------------------------------------------ */

/* bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7,
 * total_bits=8): 256 sorted values from -0.9929... to 1.0. */
QLORA_API qlora_status qlora_q8_dynamic_map(float * out256);

/* Blockwise 8-bit quantization of `src` (F32, F16 or BF16, any shape, contiguous):
 * absmax[b] = max |x| over block b; q = nearest map entry to x / absmax[b]
 * (bitsandbytes' dQuantize). `q`: U8 with src's element count; `absmax`: F32
 * with ceil(n / blocksize) elements. `code` may be NULL (signed dynamic map)
 * or an F32 view of 256 sorted values. */
QLORA_API qlora_status qlora_q8_quantize(qlora_context_t ctx, const qlora_view * src, int32_t blocksize,
                                         const qlora_view * code, const qlora_view * q, const qlora_view * absmax);

/* out = code[q] * absmax[block] in fp32, then converted to `out`'s dtype
 * (F32, F16 or BF16; round to nearest even) with q's element count. */
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
    int32_t         int8_x; /* default 0 (x used exactly). 1 allows 8-bit activations in
                              the FORWARD matvec (M <= 8, K % 128 == 0, blocksize >= 32)
                              on CPUs with QLORA_ISA_AVX512_BF16, as llama.cpp does: each
                              32-element block of x is rounded to int8 with scale
                              absmax / 127, the code table to round(127 * code / max|code|),
                              and the products summed as integers per block
                              (docs/kernels.md "8-bit activations" has the error bound).
                              Elsewhere (other ops, shapes, ISAs, CUDA) the flag changes
                              nothing. The REF backend computes the same int8 product (the
                              oracle of that kernel) where the CPU kernel would apply. */
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
/* CUDA backend: device-resident data and streams (docs/cuda.md)            */
/* ------------------------------------------------------------------------ */
/*
 * Built with -DQLORA_CUDA=ON (the library is then libqlora_cuda); in other
 * builds every function of this section returns QLORA_ERROR_UNSUPPORTED.
 *
 * A QLORA_BACKEND_CUDA context is bound to one device (params.device) and one
 * stream (the legacy default stream until qlora_context_set_cuda_stream).
 * Its ops take either
 *  - device data: every view has `device` = the context's device and points
 *    to CUDA memory of that device (cudaMalloc'd or managed), and every 4-bit
 *    tensor lives on that device. The work is queued on the context's stream
 *    and the call returns without waiting, except where a result must reach
 *    the host (below); or
 *  - host data: every view is host memory and every tensor a host tensor.
 *    The data is staged: copied to the device, computed there and copied
 *    back; the call synchronizes the stream before it returns (also when it
 *    fails), so the caller's memory is free to reuse.
 * Mixing the two in one call is INVALID_ARGUMENT (the message names the
 * arrays), as is a view or tensor on another device, a view whose `device`
 * says CUDA but whose pointer is host memory, and device data or a device
 * tensor on a REF or CPU context. Tables (qlora_q8_* `code`) are always host
 * memory.
 *
 * Ops with device data on a CUDA context, and where they synchronize:
 *  - qlora_q4_quantize: creates a device tensor; synchronizes (it reports the
 *    first NaN/Inf and computes the double-quantization offset on the host);
 *  - qlora_q4_dequantize (into a device view): asynchronous;
 *  - qlora_q8_quantize: synchronizes once (NaN/Inf check before writing);
 *    qlora_q8_dequantize: asynchronous;
 *  - qlora_q4_matmul: asynchronous. Also takes F16 x and y (any mix of F32,
 *    BF16 and F16). M <= 8 (and K % 8 == 0) runs a gemv kernel that streams
 *    W once; larger problems run either a fused tiled kernel (W decoded to
 *    fp32 in shared memory) or, for large M, W dequantized chunk by chunk
 *    into a reused device tile (in x's dtype: with BF16/F16 x, W is rounded
 *    to 16 bits there, as bitsandbytes does) followed by a cuBLAS GEMM with
 *    fp32 accumulation. Deterministic for a given device and shape;
 *  - qlora_adamw_step: synchronizes once (the gradient norm: non-finite
 *    gradients are refused before anything changes); unpaged states move to
 *    the device on the first CUDA step and stay there; a CUDA_UNIFIED pager
 *    prefetches each group of pages before use, and the step synchronizes
 *    before releasing it. Results are bit-identical to the CPU backends.
 * Every result equals the REF backend's bit for bit, except the matmul
 * (fp32 accumulation, error bounds as on the CPU backend).
 *
 * Errors: CUDA runtime failures are QLORA_ERROR_CUDA with the operation and
 * CUDA's error name and text; device memory exhaustion is
 * QLORA_ERROR_OUT_OF_MEMORY with the requested and free sizes. An error in a
 * kernel (a sticky CUDA error) is reported by the next call that checks;
 * as in every CUDA program, the device context is then unusable. Nothing
 * aborts the process.
 */

/* Number of CUDA devices the driver reports (0 when there is no driver or
 * device; the message then says why). UNSUPPORTED in builds without CUDA. */
QLORA_API qlora_status qlora_cuda_device_count(int32_t * out);

/* Makes the context queue its work on `stream` (a cudaStream_t of the
 * context's device; NULL = the legacy default stream, where TorchSharp and
 * PyTorch run unless told otherwise). The stream must stay valid while the
 * context uses it: until it is replaced or the context is freed. Work
 * already queued on the previous stream is not waited for. INVALID_ARGUMENT
 * on a non-CUDA context. */
QLORA_API qlora_status qlora_context_set_cuda_stream(qlora_context_t ctx, void * stream);
QLORA_API qlora_status qlora_context_get_cuda_stream(qlora_context_t ctx, void ** out);

/* Waits until the work queued on the context's stream has finished
 * (cudaStreamSynchronize); reports errors of that work. */
QLORA_API qlora_status qlora_context_synchronize(qlora_context_t ctx);

/* A copy of `tensor` on the context's device (a host tensor, or a device
 * tensor of the same device). Synchronizes when copying from the host, so
 * the host tensor may be freed as soon as it returns. */
QLORA_API qlora_status qlora_q4_to_device(qlora_context_t ctx, qlora_q4_tensor_t tensor, qlora_q4_tensor_t * out);

/* A host copy of `tensor` (a device tensor of the context's device, or a host
 * tensor). Synchronizes. qlora_q4_get_parts then works on the copy. */
QLORA_API qlora_status qlora_q4_to_host(qlora_context_t ctx, qlora_q4_tensor_t tensor, qlora_q4_tensor_t * out);

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

/* ======================================================================== */
/* File IO: safetensors, bitsandbytes 4-bit checkpoints, llama2.c            */
/* ======================================================================== */
/*
 * Every parser of outside input lives here, in the native core. Files are
 * memory-mapped read-only: opening one reads only its header, and tensor data
 * is paged in when touched, so a checkpoint larger than RAM can be processed
 * tensor by tensor. Views returned into a mapped file (`data` of a
 * qlora_view) point to READ-ONLY memory (writing through them faults) and are
 * valid as long as the file handle lives. Their alignment is the file's: a
 * tensor whose offset is not a multiple of its element size gives an
 * unaligned pointer (files written by this library and by the safetensors
 * reference implementation are always aligned).
 *
 * Malformed files give QLORA_ERROR_FORMAT with a message naming the file and
 * the offending key, field or byte offset; a file that cannot be opened,
 * read or written gives QLORA_ERROR_IO with the path and the errno text.
 * docs/formats-io.md lists what is accepted and rejected.
 */

/* Paging hint for a memory-mapped file (madvise). */
typedef enum qlora_access_hint {
    QLORA_ACCESS_NORMAL     = 0,
    QLORA_ACCESS_SEQUENTIAL = 1, /* read ahead aggressively; pages behind the reader may be dropped early */
    QLORA_ACCESS_RANDOM     = 2  /* no read-ahead */
} qlora_access_hint;

/* ---- safetensors reader ------------------------------------------------ */

#define QLORA_ST_MAX_DIMS 8

typedef struct qlora_safetensors_params {
    qlora_access_hint access;           /* default QLORA_ACCESS_NORMAL */
    int64_t           max_header_bytes; /* default 100000000 (the reference implementation's limit) */
} qlora_safetensors_params;

QLORA_API qlora_safetensors_params qlora_safetensors_default_params(void);

/* An open safetensors file, or a sharded checkpoint (several files behind a
 * model.safetensors.index.json) presented as one set of tensors. */
typedef struct qlora_safetensors * qlora_safetensors_t;

/* One tensor. Strings are valid while the handle lives. */
typedef struct qlora_safetensors_tensor {
    const char * name;        /* UTF-8, NUL-terminated */
    const char * path;        /* the file holding it (the shard, for an index) */
    qlora_dtype  dtype;
    int32_t      n_dims;      /* 0 (a scalar) .. QLORA_ST_MAX_DIMS */
    int64_t      shape[QLORA_ST_MAX_DIMS]; /* entries past n_dims are 0 */
    int64_t      numel;       /* product of the shape (1 for a scalar; may be 0) */
    int64_t      nbytes;      /* numel * qlora_dtype_size(dtype) */
    int64_t      file_offset; /* absolute offset of the first byte in `path` */
} qlora_safetensors_tensor;

/* Opens and validates one .safetensors file (see docs/formats-io.md). */
QLORA_API qlora_status qlora_safetensors_open(const char * path, const qlora_safetensors_params * params,
                                              qlora_safetensors_t * out);

/* Opens a sharded checkpoint from its index (model.safetensors.index.json):
 * reads "weight_map", opens every shard it names (plain file names in the
 * index's directory), and checks that the index and the shards agree exactly
 * (every listed tensor is in the shard named for it, every tensor of every
 * shard is listed, no name in two shards). The tensors of all shards are then
 * one set; metadata is the union of the shards' __metadata__ (a key with
 * different values in two shards is a FORMAT error). */
QLORA_API qlora_status qlora_safetensors_open_index(const char * index_path, const qlora_safetensors_params * params,
                                                    qlora_safetensors_t * out);

QLORA_API void qlora_safetensors_free(qlora_safetensors_t file);

/* Number of tensors. Indices 0..count-1 follow the data order (shard by
 * shard, increasing offset), i.e. the order that streams the file(s). */
QLORA_API qlora_status qlora_safetensors_count(qlora_safetensors_t file, int64_t * out);

QLORA_API qlora_status qlora_safetensors_info(qlora_safetensors_t file, int64_t index, qlora_safetensors_tensor * out);

/* Index of the tensor called `name`, or -1 (and QLORA_OK) if there is none. */
QLORA_API qlora_status qlora_safetensors_find(qlora_safetensors_t file, const char * name, int64_t * out_index);

/* A view of a tensor's bytes in the mapped file (read-only, valid while the
 * handle lives): cols = the last dimension, rows = the product of the others
 * (1 x 1 for a scalar, 1 x n for a vector). Nothing is read until touched. */
QLORA_API qlora_status qlora_safetensors_data(qlora_safetensors_t file, int64_t index, qlora_view * out);

/* Asks the kernel to start reading a tensor's pages now (MADV_WILLNEED). */
QLORA_API qlora_status qlora_safetensors_prefetch(qlora_safetensors_t file, int64_t index);

/* Drops a tensor's pages from this process (MADV_DONTNEED, whole pages, so
 * neighbours sharing a page are dropped too) and lets the page cache evict
 * them (POSIX_FADV_DONTNEED). Views stay valid: touching them again reads the
 * same bytes back from the file. Call it after converting a tensor so that
 * streaming a large checkpoint keeps only the current tensor resident. */
QLORA_API qlora_status qlora_safetensors_release(qlora_safetensors_t file, int64_t index);

/* __metadata__ entries (string -> string), sorted by key. */
QLORA_API qlora_status qlora_safetensors_metadata_count(qlora_safetensors_t file, int64_t * out);
QLORA_API qlora_status qlora_safetensors_metadata_at(qlora_safetensors_t file, int64_t index, const char ** out_key,
                                                     const char ** out_value);
/* The value stored under `key`, or NULL (and QLORA_OK) if there is none. */
QLORA_API qlora_status qlora_safetensors_metadata_get(qlora_safetensors_t file, const char * key,
                                                      const char ** out_value);

/* ---- safetensors writer ------------------------------------------------ */

/* Collects tensors and metadata, then writes one file exactly as the
 * safetensors reference implementation does: header JSON without spaces,
 * "__metadata__" first (keys sorted), header padded with spaces to a multiple
 * of 8 bytes, tensors ordered by dtype (widest first) then name, so every
 * tensor is aligned to its element size. The write is atomic (a temporary
 * file in the same directory, fsync, rename): on any failure no partial
 * output remains and an existing file at `path` is untouched. */
typedef struct qlora_safetensors_writer * qlora_safetensors_writer_t;

QLORA_API qlora_status qlora_safetensors_writer_create(qlora_safetensors_writer_t * out);
QLORA_API void         qlora_safetensors_writer_free(qlora_safetensors_writer_t writer);

/* Adds tensor `name` (unique, non-empty UTF-8, not "__metadata__") with the
 * given shape (n_dims 0..QLORA_ST_MAX_DIMS; `shape` may be NULL for a
 * scalar). `data` is a host view of any dtype whose rows * cols equals the
 * product of the shape (its stride may be > cols). borrow = 0 copies the
 * bytes now; borrow != 0 keeps only the pointer, and the memory must then
 * stay valid and unchanged until qlora_safetensors_writer_write returns
 * (for large models: no second copy in memory). */
QLORA_API qlora_status qlora_safetensors_writer_add(qlora_safetensors_writer_t writer, const char * name,
                                                    const qlora_view * data, int32_t n_dims, const int64_t * shape,
                                                    int32_t borrow);

/* Adds a __metadata__ entry (UTF-8; keys unique). PEFT and transformers
 * expect {"format": "pt"}. */
QLORA_API qlora_status qlora_safetensors_writer_set_metadata(qlora_safetensors_writer_t writer, const char * key,
                                                             const char * value);

/* Writes everything added so far to `path` (atomically, see above). The
 * writer may be written again. */
QLORA_API qlora_status qlora_safetensors_writer_write(qlora_safetensors_writer_t writer, const char * path);

/* ---- bitsandbytes 4-bit checkpoints ------------------------------------ */

/* The JSON stored under "<prefix>weight.quant_state.bitsandbytes__nf4|fp4". */
typedef struct qlora_bnb_quant_state {
    qlora_quant_type quant_type;       /* "quant_type": "nf4" | "fp4" */
    int32_t          blocksize;        /* "blocksize" */
    qlora_dtype      dtype;            /* "dtype": "float32" | "float16" | "bfloat16" */
    int64_t          rows, cols;       /* "shape": [rows, cols] */
    int32_t          double_quant;     /* 1 when the nested_* fields are present */
    int32_t          nested_blocksize; /* "nested_blocksize" (DQ) */
    float            nested_offset;    /* "nested_offset" (DQ) */
} qlora_bnb_quant_state;

/* Parses and validates a quant-state JSON (a U8 view of its UTF-8 bytes). */
QLORA_API qlora_status qlora_bnb_parse_quant_state(const qlora_view * json, qlora_bnb_quant_state * out);

/* Reads the 4-bit linear weight stored under `prefix` (e.g.
 * "model.layers.0.self_attn.q_proj.": keys "<prefix>weight",
 * "<prefix>weight.absmax", ".quant_map", ".nested_absmax",
 * ".nested_quant_map", ".quant_state.bitsandbytes__nf4|fp4") into a new 4-bit
 * tensor, without re-quantizing: the packed nibbles, scales and the code
 * tables from the file are used as they are. Every dtype, shape and count is
 * checked against the quant state (FORMAT error naming the file and key). */
QLORA_API qlora_status qlora_bnb_read_q4(qlora_context_t ctx, qlora_safetensors_t file, const char * prefix,
                                         qlora_q4_tensor_t * out);

/* Adds `tensor` to a writer under `prefix` with bitsandbytes' keys, dtypes
 * and shapes, and its quant state as Python's json.dumps writes it. borrow:
 * as in qlora_safetensors_writer_add (the tensor must then outlive the
 * write; the small tables are always copied). */
QLORA_API qlora_status qlora_bnb_add_q4(qlora_safetensors_writer_t writer, const char * prefix,
                                        qlora_q4_tensor_t tensor, int32_t borrow);

/* ---- llama2.c checkpoints (model.bin, tokenizer.bin) ------------------- */

typedef struct qlora_llama2c_config {
    int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads;
    int32_t vocab_size;        /* always positive here */
    int32_t seq_len;
    int32_t shared_classifier; /* 1: wcls is the token embedding (vocab_size was positive in the file) */
} qlora_llama2c_config;

/* The arrays of model.bin, in file order. Matrices are [out, in]. */
typedef enum qlora_llama2c_weight {
    QLORA_LLAMA2C_TOKEN_EMBEDDING = 0, /* [vocab, dim] */
    QLORA_LLAMA2C_RMS_ATT         = 1, /* [L, dim] */
    QLORA_LLAMA2C_WQ              = 2, /* [L, dim, dim] */
    QLORA_LLAMA2C_WK              = 3, /* [L, kv_dim, dim] */
    QLORA_LLAMA2C_WV              = 4, /* [L, kv_dim, dim] */
    QLORA_LLAMA2C_WO              = 5, /* [L, dim, dim] */
    QLORA_LLAMA2C_RMS_FFN         = 6, /* [L, dim] */
    QLORA_LLAMA2C_W1              = 7, /* [L, hidden, dim] (gate) */
    QLORA_LLAMA2C_W2              = 8, /* [L, dim, hidden] (down) */
    QLORA_LLAMA2C_W3              = 9, /* [L, hidden, dim] (up) */
    QLORA_LLAMA2C_RMS_FINAL       = 10, /* [dim] */
    QLORA_LLAMA2C_WCLS            = 11  /* [vocab, dim]; the embedding's memory when shared */
} qlora_llama2c_weight;

typedef struct qlora_llama2c_model * qlora_llama2c_model_t;

/* Maps a llama2.c (legacy, version 0) model.bin and checks its length against
 * the header exactly. */
QLORA_API qlora_status qlora_llama2c_model_open(const char * path, qlora_llama2c_model_t * out);
QLORA_API void         qlora_llama2c_model_free(qlora_llama2c_model_t model);
QLORA_API qlora_status qlora_llama2c_model_config(qlora_llama2c_model_t model, qlora_llama2c_config * out);

/* An F32 view of one array (read-only, valid while the model lives). For the
 * per-layer arrays, layer = 0..L-1 gives that layer's slice ([dim] or
 * [out, in]) and layer = -1 the whole array as rows = L * out; the other
 * arrays need layer = -1. */
QLORA_API qlora_status qlora_llama2c_model_weight(qlora_llama2c_model_t model, qlora_llama2c_weight which,
                                                  int32_t layer, qlora_view * out);

typedef struct qlora_llama2c_tokenizer * qlora_llama2c_tokenizer_t;

/* Reads a llama2.c tokenizer.bin. vocab_size > 0: the file must hold exactly
 * that many tokens (pass the model's); 0: as many as the file holds. */
QLORA_API qlora_status qlora_llama2c_tokenizer_open(const char * path, int32_t vocab_size,
                                                    qlora_llama2c_tokenizer_t * out);
QLORA_API void         qlora_llama2c_tokenizer_free(qlora_llama2c_tokenizer_t tokenizer);
QLORA_API qlora_status qlora_llama2c_tokenizer_info(qlora_llama2c_tokenizer_t tokenizer, int32_t * out_vocab_size,
                                                    int32_t * out_max_token_length);

/* Token `id`: its bytes (`*out_length` of them, plus a NUL after them; a
 * piece may itself contain NUL, e.g. the byte token 0x00) and its score.
 * Valid while the tokenizer lives. */
QLORA_API qlora_status qlora_llama2c_tokenizer_token(qlora_llama2c_tokenizer_t tokenizer, int32_t id,
                                                     const char ** out_piece, int32_t * out_length,
                                                     float * out_score);

/* ------------------------------------------------------------------------ */
/* Memory pager: a residency budget for large, rarely-touched buffers        */
/* (optimizer states). See docs/pager.md.                                    */
/* ------------------------------------------------------------------------ */

/* Where the pages that are not resident live. */
typedef enum qlora_pager_backing {
    QLORA_PAGER_HOST_SPILL_FILE = 0, /* host memory; evicted pages go to a spill file (CRC32C per page) */
    QLORA_PAGER_CUDA_UNIFIED    = 1  /* CUDA managed memory, prefetched to the device on acquire and
                                        evicted to the host past the budget (builds with the CUDA
                                        backend; elsewhere qlora_pager_create answers UNSUPPORTED) */
} qlora_pager_backing;

/* How an acquired range will be used. */
typedef enum qlora_pager_access {
    QLORA_PAGER_READ       = 0, /* read only: the pages stay clean (never written back) */
    QLORA_PAGER_READ_WRITE = 1, /* read and modified: the pages become dirty */
    QLORA_PAGER_OVERWRITE  = 2  /* every byte of the range will be written: a page wholly inside it is
                                   not read back from the store (its old contents are lost) */
} qlora_pager_access;

typedef struct qlora_pager * qlora_pager_t;

typedef struct qlora_pager_params {
    qlora_pager_backing backing;      /* default QLORA_PAGER_HOST_SPILL_FILE */
    int64_t             budget_bytes; /* most bytes resident at once: HOST_SPILL_FILE keeps at most
                                         floor(budget / page_bytes) page frames. Default INT64_MAX
                                         (no limit); less than one page: INVALID_ARGUMENT */
    int64_t             page_bytes;   /* default 1 MiB; a power of two in [4 KiB, 1 GiB] */
    const char *        spill_dir;    /* HOST_SPILL_FILE: directory of the spill file (UTF-8), created
                                         if missing; NULL = $TMPDIR or /tmp. Copied by create. */
    int32_t             device;       /* CUDA_UNIFIED: CUDA device ordinal; default 0 */
} qlora_pager_params;

/* Counters of a pager. Resident, peak and pinned bytes count whole pages
 * (the memory actually held); page-in/out byte counts are exact. */
typedef struct qlora_pager_stats {
    int64_t budget_bytes;
    int64_t page_bytes;
    int64_t allocations;         /* live allocations */
    int64_t allocated_bytes;     /* their total size */
    int64_t resident_bytes;      /* bytes of resident pages; never above budget_bytes */
    int64_t peak_resident_bytes; /* highest resident_bytes since create / reset */
    int64_t pinned_bytes;        /* bytes of acquired (pinned) pages */
    int64_t page_ins;            /* pages read back from the store */
    int64_t page_outs;           /* pages written to the store */
    int64_t evictions;           /* pages made non-resident (clean ones are not written) */
    int64_t bytes_paged_in;
    int64_t bytes_spilled;       /* bytes written to the store */
    int64_t store_bytes;         /* current size of the store (spill file) */
} qlora_pager_stats;

QLORA_API qlora_pager_params qlora_pager_default_params(void);

/* Creates a pager. HOST_SPILL_FILE creates `spill_dir` if needed and a new,
 * uniquely named spill file in it (removed by qlora_pager_free); a directory
 * that cannot be created or written is QLORA_ERROR_IO (message has the path). */
QLORA_API qlora_status qlora_pager_create(const qlora_pager_params * params, qlora_pager_t * out);

/* Frees the handle. Allocations still used by an optimizer keep the pager's
 * storage alive until that optimizer is freed. Accepts NULL. */
QLORA_API void qlora_pager_free(qlora_pager_t pager);

/* A new zero-filled allocation of `bytes` bytes (no memory is committed until
 * a page is acquired), addressed by the id written to `out_id` (> 0). */
QLORA_API qlora_status qlora_pager_alloc(qlora_pager_t pager, int64_t bytes, int64_t * out_id);

/* Frees an allocation; none of its pages may be acquired. */
QLORA_API qlora_status qlora_pager_dealloc(qlora_pager_t pager, int64_t id);

/* Makes bytes [offset, offset + bytes) of allocation `id` resident and pins
 * them (evicting least-recently-used unpinned pages, writing dirty ones to
 * the store, to stay within the budget); `*out_ptr` points at `offset` and
 * stays valid until the matching release (the memory is reused after it).
 * Pins nest: every acquire needs one release of the same range. Pinning more
 * than the budget holds is QLORA_ERROR_OUT_OF_MEMORY. A page that cannot be
 * read back (I/O error, short read, checksum mismatch: QLORA_ERROR_IO /
 * QLORA_ERROR_FORMAT, message has the file, page and offset) is never
 * returned, and nothing new stays pinned on failure.
 * HOST_SPILL_FILE: the range must lie within one page (each page lives in
 * its own frame; a range across pages is INVALID_ARGUMENT); pointers are
 * host memory. CUDA_UNIFIED: any range (contiguous managed memory, usable on
 * the pager's device and the host). */
QLORA_API qlora_status qlora_pager_acquire(qlora_pager_t pager, int64_t id, int64_t offset, int64_t bytes,
                                           qlora_pager_access access, void ** out_ptr);

/* Unpins a range acquired before; its pointer must not be used afterwards. */
QLORA_API qlora_status qlora_pager_release(qlora_pager_t pager, int64_t id, int64_t offset, int64_t bytes);

/* Evicts least-recently-used unpinned pages until at most `target_bytes` are
 * resident (0: everything unpinned). */
QLORA_API qlora_status qlora_pager_trim(qlora_pager_t pager, int64_t target_bytes);

QLORA_API qlora_status qlora_pager_get_stats(qlora_pager_t pager, qlora_pager_stats * out);

/* Zeroes the page-in/out counters and sets the peak to the current residency. */
QLORA_API qlora_status qlora_pager_reset_stats(qlora_pager_t pager);

/* ------------------------------------------------------------------------ */
/* AdamW optimizer with 32-bit or 8-bit blockwise states (optionally paged)  */
/* ------------------------------------------------------------------------ */

typedef enum qlora_optim_state {
    QLORA_OPTIM_STATE_F32  = 0, /* m and v in fp32: 8 bytes per parameter */
    QLORA_OPTIM_STATE_8BIT = 1  /* bitsandbytes' 8-bit blockwise states (block 256; m with the signed,
                                   v with the unsigned dynamic map; fp32 absmax per block):
                                   2.03 bytes per parameter */
} qlora_optim_state;

typedef struct qlora_adamw_params {
    qlora_optim_state state;           /* default QLORA_OPTIM_STATE_F32 */
    float             lr;              /* default 1e-3; >= 0 */
    float             beta1;           /* default 0.9; in [0, 1) */
    float             beta2;           /* default 0.999; in [0, 1) */
    float             eps;             /* default 1e-8; > 0 */
    float             weight_decay;    /* default 0.01; decoupled (AdamW); >= 0 */
    float             max_grad_norm;   /* default 0 = no clipping; else gradients are scaled by
                                          max_grad_norm / (norm + 1e-6) when that is below 1 */
    int32_t           bias_correction; /* default 1 */
} qlora_adamw_params;

typedef struct qlora_adamw * qlora_adamw_t;

typedef struct qlora_adamw_info {
    qlora_optim_state state;
    int32_t           n_buffers;
    int64_t           numel;       /* parameters over all buffers */
    int64_t           step;        /* completed steps */
    int64_t           state_bytes; /* bytes of optimizer state; when paged, whole pages (what a
                                      budget of 100% must hold) */
    int32_t           paged;       /* 1 when the states live in a pager */
    int32_t           failed;      /* 1 after a step failed half-way (load a checkpoint to recover) */
} qlora_adamw_info;

typedef struct qlora_adamw_step_info {
    int64_t step;       /* the step just completed (1 after the first) */
    double  grad_norm;  /* global L2 norm of all gradients (float64), before clipping */
    float   clip_scale; /* factor the gradients were scaled by (1 when not clipped) */
} qlora_adamw_step_info;

QLORA_API qlora_adamw_params qlora_adamw_default_params(void);

/* Creates an optimizer with one parameter group. With `pager` NULL the states
 * live in ordinary host memory; otherwise in that pager, which the optimizer
 * keeps alive (the pager handle itself may be freed first). */
QLORA_API qlora_status qlora_adamw_create(const qlora_adamw_params * params, qlora_pager_t pager,
                                          qlora_adamw_t * out);
QLORA_API void         qlora_adamw_free(qlora_adamw_t opt);

/* Registers a parameter buffer of `numel` fp32 elements (before the first
 * step); its states start at zero. `out_index` (may be NULL) gets its index,
 * the order in which qlora_adamw_step takes the views. Only sizes are
 * registered, never pointers: the step takes fresh views every time, so
 * storage that moves between steps (e.g. a gradient re-allocated after
 * zero_grad(set_to_none)) is fine. */
QLORA_API qlora_status qlora_adamw_add_buffer(qlora_adamw_t opt, int64_t numel, int32_t * out_index);

/* Replaces the hyper-parameters (e.g. the learning rate of a schedule); the
 * state type cannot change. */
QLORA_API qlora_status qlora_adamw_set_params(qlora_adamw_t opt, const qlora_adamw_params * params);
QLORA_API qlora_status qlora_adamw_get_params(qlora_adamw_t opt, qlora_adamw_params * out);
QLORA_API qlora_status qlora_adamw_get_info(qlora_adamw_t opt, qlora_adamw_info * out);

/* One AdamW step over every registered buffer. `params[i]` / `grads[i]` are
 * contiguous host F32 views with buffer i's element count (any 2-D shape);
 * no two may overlap. Gradients are read, never modified (clipping scales
 * them on the fly). Order per element, as bitsandbytes' kernels: g *= clip;
 * m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p += -lr sqrt(1-b2^t)/(1-b1^t)
 * * m / (sqrt(v) + eps sqrt(1-b2^t)); then p *= 1 - lr wd. 8-bit states are
 * dequantized before and requantized with the new block absmax after.
 * A non-finite gradient is INVALID_ARGUMENT (buffer and element named) and
 * changes nothing. Results are bit-identical across backends, ISAs, thread
 * counts and pager budgets. `out` may be NULL. */
QLORA_API qlora_status qlora_adamw_step(qlora_context_t ctx, qlora_adamw_t opt, const qlora_view * params,
                                        const qlora_view * grads, int32_t n_buffers, qlora_adamw_step_info * out);

/* Writes hyper-parameters, step, buffer sizes and states to `path`
 * atomically (temporary file in the same directory, fsync, rename): on
 * failure the previous file, if any, is left unchanged. */
QLORA_API qlora_status qlora_adamw_save(qlora_adamw_t opt, const char * path);

/* Restores a file written by qlora_adamw_save: hyper-parameters, step and
 * states. The file is fully validated first (magic, version, state type,
 * sizes, CRC32C); a file whose buffer count or sizes differ from the
 * registered buffers is refused (INVALID_ARGUMENT naming the buffer), and any
 * refusal leaves the optimizer unchanged. */
QLORA_API qlora_status qlora_adamw_load(qlora_adamw_t opt, const char * path);

#ifdef __cplusplus
}
#endif

#endif /* QLORA_H */

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

/* ------------------------------------------------------------------------ */
/* Memory pager: a residency budget for large, rarely-touched buffers        */
/* (optimizer states). See docs/pager.md.                                    */
/* ------------------------------------------------------------------------ */

/* Where the pages that are not resident live. */
typedef enum qlora_pager_backing {
    QLORA_PAGER_HOST_SPILL_FILE = 0, /* host memory; evicted pages go to a spill file (CRC32C per page) */
    QLORA_PAGER_CUDA_UNIFIED    = 1  /* CUDA managed memory, prefetched to the device on acquire and
                                        evicted to the host past the budget; UNSUPPORTED unless the
                                        library was built with -DQLORA_CUDA=ON */
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

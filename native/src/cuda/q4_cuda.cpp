// 4-bit tensors and 8-bit blockwise quantization on a CUDA context: device
// residency (one allocation per tensor), host <-> device copies, and the
// quantize / dequantize ops for device data or staged host data.
#include "core/half.hpp"
#include "cuda/cuda_ops.hpp"
#include "cuda/cuda_state.hpp"
#include "cuda/kernels.hpp"
#include "cuda/q4_device.hpp"
#include "quant/q4_tensor.hpp"
#include "quant/tables.hpp"

#include <cstring>

namespace qlora::cuda {

namespace {

struct Layout {
    size_t packed = 0, absmax = 0, qabsmax = 0, nested = 0, total = 0;
    size_t packed_region = 0;
};

// packed (+ at least 16 zero bytes, read by the vector kernels), then the
// scales; every part 256-byte aligned.
Layout layout_of(const qlora_q4_tensor & t) {
    Layout l;
    l.packed_region = align_up(static_cast<size_t>(t.packed_bytes()) + 16, 256);
    size_t off = l.packed_region;
    const size_t nb = static_cast<size_t>(t.n_blocks());
    if (t.double_quant) {
        l.qabsmax = off;
        off += align_up(nb, 256);
        l.nested = off;
        off += align_up(static_cast<size_t>(t.n_nested_blocks()) * 4, 256);
    } else {
        l.absmax = off;
        off += align_up(nb * 4, 256);
    }
    l.total = off;
    return l;
}

// A tensor with t's metadata and tables and no storage.
std::unique_ptr<qlora_q4_tensor> clone_meta(const qlora_q4_tensor & t) {
    auto o = std::make_unique<qlora_q4_tensor>();
    o->rows = t.rows;
    o->cols = t.cols;
    o->quant_type = t.quant_type;
    o->blocksize = t.blocksize;
    o->double_quant = t.double_quant;
    o->nested_blocksize = t.nested_blocksize;
    o->orig_dtype = t.orig_dtype;
    o->nested_offset = t.nested_offset;
    std::memcpy(o->code, t.code, sizeof(o->code));
    std::memcpy(o->nested_code, t.nested_code, sizeof(o->nested_code));
    return o;
}

void copy(void * dst, const void * src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s, const char * what) {
    if (bytes) check(cudaMemcpyAsync(dst, src, bytes, kind, s), what);
}

// Points t's d_* at the parts inside `base` (laid out as layout_of) and zeroes
// the padding after the packed bytes (read, never used, by the vector kernels).
void place_parts(CudaState & st, qlora_q4_tensor & t, uint8_t * base) {
    const Layout l = layout_of(t);
    t.device = st.device;
    t.d_packed = base;
    t.d_absmax = t.double_quant ? nullptr : reinterpret_cast<float *>(base + l.absmax);
    t.d_qabsmax = t.double_quant ? base + l.qabsmax : nullptr;
    t.d_nested_absmax = t.double_quant ? reinterpret_cast<float *>(base + l.nested) : nullptr;
    const size_t pb = static_cast<size_t>(t.packed_bytes());
    check(cudaMemsetAsync(base + pb, 0, l.packed_region - pb, st.stream), "cudaMemsetAsync (tensor padding)");
}

} // namespace

void allocate_device_storage(CudaState & st, qlora_q4_tensor & t) {
    t.device_storage = device_alloc(layout_of(t).total, st.device, "4-bit tensor");
    place_parts(st, t, static_cast<uint8_t *>(t.device_storage.data()));
}

Q4Dev dev_view(const qlora_q4_tensor & t) {
    Q4Dev w{};
    w.packed = t.d_packed;
    w.absmax = t.d_absmax;
    w.qabsmax = t.d_qabsmax;
    w.nested_absmax = t.d_nested_absmax;
    w.rows = t.rows;
    w.cols = t.cols;
    w.numel = t.numel();
    w.blocksize = t.blocksize;
    w.log2b = 0;
    while ((1 << w.log2b) < t.blocksize) ++w.log2b;
    w.dq = t.double_quant ? 1 : 0;
    w.nested_blocksize = t.double_quant ? t.nested_blocksize : 0;
    w.nested_log2 = 0;
    while (t.double_quant && (1 << w.nested_log2) < t.nested_blocksize) ++w.nested_log2;
    w.nested_offset = t.nested_offset;
    return w;
}

Code16 code_of(const qlora_q4_tensor & t) {
    Code16 c;
    std::memcpy(c.v, t.code, sizeof(c.v));
    return c;
}

Code256 ncode_of(const qlora_q4_tensor & t) {
    Code256 c;
    std::memcpy(c.v, t.nested_code, sizeof(c.v));
    return c;
}

// Copies the parts of a host tensor into device storage laid out as layout_of.
void upload_parts(CudaState & st, const qlora_q4_tensor & host, qlora_q4_tensor & dev) {
    const size_t nb = static_cast<size_t>(host.n_blocks());
    copy(dev.d_packed, host.packed.data(), static_cast<size_t>(host.packed_bytes()), cudaMemcpyHostToDevice, st.stream,
         "cudaMemcpyAsync (4-bit tensor to the device)");
    if (host.double_quant) {
        copy(dev.d_qabsmax, host.qabsmax.data(), nb, cudaMemcpyHostToDevice, st.stream,
             "cudaMemcpyAsync (4-bit tensor to the device)");
        copy(dev.d_nested_absmax, host.nested_absmax.data(), static_cast<size_t>(host.n_nested_blocks()) * 4,
             cudaMemcpyHostToDevice, st.stream, "cudaMemcpyAsync (4-bit tensor to the device)");
    } else {
        copy(dev.d_absmax, host.absmax.data(), nb * 4, cudaMemcpyHostToDevice, st.stream,
             "cudaMemcpyAsync (4-bit tensor to the device)");
    }
}

StagedTensor::StagedTensor(CudaState & st, const qlora_q4_tensor & host) {
    tensor = clone_meta(host);
    buffer = st.temp(layout_of(host).total, "staging a host 4-bit tensor on the device");
    place_parts(st, *tensor, buffer.as<uint8_t>());
    upload_parts(st, host, *tensor);
}

void check_tensor_device(const CudaState & st, const qlora_q4_tensor & t, const char * name) {
    QLORA_CHECK_ARG(t.device == st.device, "%s lives on CUDA device %d; the context uses device %d", name, t.device,
                    st.device);
}

namespace {

// The side of a call's data: host (staged) or the context's device.
bool on_device(CudaState & st, const ViewInfo & v, const char * name) {
    if (v.device == QLORA_DEVICE_HOST) return false;
    check_device_view(st, v, name);
    return true;
}

[[noreturn]] void fail_mixed(const char * a, bool a_dev, const char * b, int32_t device) {
    fail(QLORA_ERROR_INVALID_ARGUMENT,
         "%s is %s but %s is %s: the arrays of one call must all be host memory or all on the context's CUDA device "
         "(%d)", a, a_dev ? "device memory" : "host memory", b, a_dev ? "host memory" : "device memory",
         static_cast<int>(device));
}

void same_side(bool a_dev, const char * a, bool b_dev, const char * b, int32_t device) {
    if (a_dev != b_dev) fail_mixed(a, a_dev, b, device);
}

unsigned long long * bad_slot(CudaState & st, StreamBuffer & buf) {
    buf = st.temp(sizeof(unsigned long long), "NaN/Inf index");
    check(cudaMemsetAsync(buf.data(), 0xff, sizeof(unsigned long long), st.stream), "cudaMemsetAsync");
    return buf.as<unsigned long long>();
}

Thresholds thresholds() {
    Thresholds th;
    std::memcpy(th.nf4, nf4_thresholds(), sizeof(th.nf4));
    std::memcpy(th.fp4, kFP4Thresholds, sizeof(th.fp4));
    return th;
}

Code256 code256(const float * code) {
    Code256 c;
    std::memcpy(c.v, code, sizeof(c.v));
    return c;
}

// Quantizes device memory x (contiguous rows x cols of `dtype`) into a new
// device tensor, whose storage is persistent (cudaMalloc) or, with `temp`,
// stream-ordered memory owned by *temp. Synchronizes the stream (NaN/Inf
// report, nested offset).
std::unique_ptr<qlora_q4_tensor> quantize_device(CudaState & st, const void * x, qlora_dtype dtype, int64_t rows,
                                                 int64_t cols, const qlora_quant_params & p,
                                                 StreamBuffer * temp = nullptr) {
    auto t = std::make_unique<qlora_q4_tensor>();
    t->rows = rows;
    t->cols = cols;
    t->quant_type = p.quant_type;
    t->blocksize = p.blocksize;
    t->double_quant = p.double_quant != 0;
    t->nested_blocksize = p.double_quant ? p.nested_blocksize : 0;
    t->orig_dtype = dtype;
    std::memcpy(t->code, code_table(t->quant_type), sizeof(t->code));
    if (t->double_quant) std::memcpy(t->nested_code, signed_dynamic_map(), sizeof(t->nested_code));
    if (temp) {
        *temp = st.temp(layout_of(*t).total, "a 4-bit tensor on the device");
        place_parts(st, *t, temp->as<uint8_t>());
    } else {
        allocate_device_storage(st, *t);
    }

    const int64_t n = t->numel(), nb = t->n_blocks();
    StreamBuffer bad_buf, absmax_buf;
    unsigned long long * bad = bad_slot(st, bad_buf);
    float * absmax = t->d_absmax;
    if (t->double_quant) {
        absmax_buf = st.temp(static_cast<size_t>(nb) * 4, "block scales before double quantization");
        absmax = absmax_buf.as<float>();
    }
    launch_q4_quantize(x, dtype, n, t->blocksize, t->quant_type, thresholds(), absmax, t->d_packed, bad, st.sm_count,
                       st.stream);
    check_launch("the 4-bit quantize kernel");
    HostArray<float> host_absmax;
    if (t->double_quant) host_absmax.resize(static_cast<size_t>(nb));
    unsigned long long first_bad = 0;
    {
        StreamSync sync(st);
        check(cudaMemcpyAsync(&first_bad, bad, sizeof(first_bad), cudaMemcpyDeviceToHost, st.stream),
              "cudaMemcpyAsync (NaN/Inf index)");
        if (t->double_quant)
            check(cudaMemcpyAsync(host_absmax.data(), absmax, static_cast<size_t>(nb) * 4, cudaMemcpyDeviceToHost,
                                  st.stream),
                  "cudaMemcpyAsync (block scales)");
        sync.sync("cudaStreamSynchronize (4-bit quantize)");
    }
    if (first_bad != ~0ull) {
        const int64_t i = static_cast<int64_t>(first_bad);
        fail(QLORA_ERROR_INVALID_ARGUMENT, "src[%lld, %lld] is not finite (NaN or Inf); cannot quantize",
             static_cast<long long>(i / cols), static_cast<long long>(i % cols));
    }
    if (t->double_quant) {
        // offset = mean(absmax) exactly as the host (q4_api.cpp): float64 sum in order.
        double sum = 0.0;
        for (int64_t b = 0; b < nb; ++b) sum += host_absmax[static_cast<size_t>(b)];
        t->nested_offset = static_cast<float>(sum / static_cast<double>(nb));
        StreamBuffer unused_bad;
        launch_q8_quantize(absmax, QLORA_DTYPE_F32, nb, t->nested_blocksize, t->nested_offset, code256(t->nested_code),
                           t->d_qabsmax, t->d_nested_absmax, bad_slot(st, unused_bad), st.sm_count, st.stream);
        check_launch("the 8-bit quantize kernel (double quantization)");
    }
    return t;
}

// Copies a device tensor's parts into a new host tensor. Synchronizes.
std::unique_ptr<qlora_q4_tensor> download(CudaState & st, const qlora_q4_tensor & d) {
    auto h = clone_meta(d);
    h->device = QLORA_DEVICE_HOST;
    const size_t nb = static_cast<size_t>(d.n_blocks());
    h->packed.resize(static_cast<size_t>(d.packed_bytes()));
    if (d.double_quant) {
        h->qabsmax.resize(nb);
        h->nested_absmax.resize(static_cast<size_t>(d.n_nested_blocks()));
    } else {
        h->absmax.resize(nb);
    }
    StreamSync sync(st);
    const char * what = "cudaMemcpyAsync (4-bit tensor to the host)";
    copy(h->packed.data(), d.d_packed, h->packed.bytes(), cudaMemcpyDeviceToHost, st.stream, what);
    if (d.double_quant) {
        copy(h->qabsmax.data(), d.d_qabsmax, h->qabsmax.bytes(), cudaMemcpyDeviceToHost, st.stream, what);
        copy(h->nested_absmax.data(), d.d_nested_absmax, h->nested_absmax.bytes(), cudaMemcpyDeviceToHost, st.stream, what);
    } else {
        copy(h->absmax.data(), d.d_absmax, h->absmax.bytes(), cudaMemcpyDeviceToHost, st.stream, what);
    }
    sync.sync("cudaStreamSynchronize (4-bit tensor to the host)");
    return h;
}

} // namespace

std::unique_ptr<qlora_q4_tensor> q4_quantize(qlora_context & ctx, const ViewInfo & src, const qlora_quant_params & p) {
    CudaState & st = state_of(ctx);
    DeviceGuard g(st.device);
    if (on_device(st, src, "src")) return quantize_device(st, src.data, src.dtype, src.rows, src.cols, p);
    // Host data: staged through the device; the result is a host tensor.
    StreamSync sync(st);
    const size_t bytes = static_cast<size_t>(src.numel()) * qlora_dtype_size(src.dtype);
    StreamBuffer x = st.temp(bytes, "staging src on the device");
    check(cudaMemcpyAsync(x.data(), src.data, bytes, cudaMemcpyHostToDevice, st.stream), "cudaMemcpyAsync (src)");
    StreamBuffer storage; // stream-ordered: no cudaFree (a device-wide wait) for the staged tensor
    auto d = quantize_device(st, x.data(), src.dtype, src.rows, src.cols, p, &storage);
    return download(st, *d);
}

void q4_dequantize(qlora_context & ctx, const qlora_q4_tensor & t, const ViewInfo & dst) {
    CudaState & st = state_of(ctx);
    DeviceGuard g(st.device);
    const bool dev = on_device(st, dst, "dst");
    same_side(t.device != QLORA_DEVICE_HOST, "the tensor", dev, "dst", st.device);
    if (dev) {
        check_tensor_device(st, t, "the tensor");
        launch_q4_dequantize(dev_view(t), code_of(t), ncode_of(t), 0, t.numel(), dst.data, dst.dtype, st.sm_count,
                             st.stream);
        check_launch("the 4-bit dequantize kernel");
        return;
    }
    StreamSync sync(st);
    StagedTensor w(st, t);
    const size_t bytes = static_cast<size_t>(t.numel()) * qlora_dtype_size(dst.dtype);
    StreamBuffer out = st.temp(bytes, "staging dst on the device");
    launch_q4_dequantize(dev_view(*w.tensor), code_of(t), ncode_of(t), 0, t.numel(), out.data(), dst.dtype, st.sm_count,
                         st.stream);
    check_launch("the 4-bit dequantize kernel");
    check(cudaMemcpyAsync(dst.data, out.data(), bytes, cudaMemcpyDeviceToHost, st.stream), "cudaMemcpyAsync (dst)");
    sync.sync("cudaStreamSynchronize (4-bit dequantize)");
}

std::unique_ptr<qlora_q4_tensor> q4_to_device(qlora_context & ctx, const qlora_q4_tensor & t) {
    CudaState & st = state_of(ctx);
    DeviceGuard g(st.device);
    auto d = clone_meta(t);
    if (t.device == QLORA_DEVICE_HOST) {
        allocate_device_storage(st, *d);
        StreamSync sync(st);
        upload_parts(st, t, *d);
        sync.sync("cudaStreamSynchronize (4-bit tensor to the device)");
        return d;
    }
    check_tensor_device(st, t, "the tensor");
    allocate_device_storage(st, *d);
    const Layout l = layout_of(t);
    check(cudaMemcpyAsync(d->d_packed, t.d_packed, l.total, cudaMemcpyDeviceToDevice, st.stream),
          "cudaMemcpyAsync (device tensor copy)");
    return d;
}

std::unique_ptr<qlora_q4_tensor> q4_to_host(qlora_context & ctx, const qlora_q4_tensor & t) {
    CudaState & st = state_of(ctx);
    DeviceGuard g(st.device);
    if (t.device == QLORA_DEVICE_HOST) {
        auto h = clone_meta(t);
        h->packed.resize(t.packed.size());
        std::memcpy(h->packed.data(), t.packed.data(), t.packed.bytes());
        h->absmax.resize(t.absmax.size());
        if (t.absmax.size()) std::memcpy(h->absmax.data(), t.absmax.data(), t.absmax.bytes());
        h->qabsmax.resize(t.qabsmax.size());
        if (t.qabsmax.size()) std::memcpy(h->qabsmax.data(), t.qabsmax.data(), t.qabsmax.bytes());
        h->nested_absmax.resize(t.nested_absmax.size());
        if (t.nested_absmax.size()) std::memcpy(h->nested_absmax.data(), t.nested_absmax.data(), t.nested_absmax.bytes());
        return h;
    }
    check_tensor_device(st, t, "the tensor");
    return download(st, t);
}

void q8_quantize(qlora_context & ctx, const ViewInfo & src, int32_t bs, const float * code, const ViewInfo & q,
                 const ViewInfo & absmax) {
    CudaState & st = state_of(ctx);
    DeviceGuard g(st.device);
    const bool dev = on_device(st, src, "src");
    same_side(dev, "src", on_device(st, q, "q"), "q", st.device);
    same_side(dev, "src", on_device(st, absmax, "absmax"), "absmax", st.device);
    const int64_t n = src.numel(), nb = (n + bs - 1) / bs;
    StreamSync sync(st);
    StreamBuffer xs, qs, as;
    const void * x = src.data;
    uint8_t * qd = q.as<uint8_t>();
    float * ad = absmax.as<float>();
    const size_t xbytes = static_cast<size_t>(n) * qlora_dtype_size(src.dtype);
    if (dev) sync.dismiss();
    if (!dev) {
        xs = st.temp(xbytes, "staging src on the device");
        qs = st.temp(static_cast<size_t>(n), "staging q on the device");
        as = st.temp(static_cast<size_t>(nb) * 4, "staging absmax on the device");
        check(cudaMemcpyAsync(xs.data(), src.data, xbytes, cudaMemcpyHostToDevice, st.stream), "cudaMemcpyAsync (src)");
        x = xs.data();
        qd = qs.as<uint8_t>();
        ad = as.as<float>();
    }
    // NaN/Inf first: the caller's q and absmax stay untouched on an error.
    StreamBuffer bad_buf;
    unsigned long long * bad = bad_slot(st, bad_buf);
    launch_find_nonfinite(x, src.dtype, n, bad, st.sm_count, st.stream);
    check_launch("the NaN/Inf scan");
    unsigned long long first_bad = 0;
    check(cudaMemcpyAsync(&first_bad, bad, sizeof(first_bad), cudaMemcpyDeviceToHost, st.stream),
          "cudaMemcpyAsync (NaN/Inf index)");
    check(cudaStreamSynchronize(st.stream), "cudaStreamSynchronize (8-bit quantize)");
    QLORA_CHECK_ARG(first_bad == ~0ull, "src[%lld] is not finite (NaN or Inf); cannot quantize",
                    static_cast<long long>(first_bad));
    StreamBuffer unused;
    launch_q8_quantize(x, src.dtype, n, bs, 0.0f, code256(code), qd, ad, bad_slot(st, unused), st.sm_count, st.stream);
    check_launch("the 8-bit quantize kernel");
    if (!dev) {
        check(cudaMemcpyAsync(q.data, qd, static_cast<size_t>(n), cudaMemcpyDeviceToHost, st.stream), "cudaMemcpyAsync (q)");
        check(cudaMemcpyAsync(absmax.data, ad, static_cast<size_t>(nb) * 4, cudaMemcpyDeviceToHost, st.stream),
              "cudaMemcpyAsync (absmax)");
        sync.sync("cudaStreamSynchronize (8-bit quantize)");
    }
}

void q8_dequantize(qlora_context & ctx, const ViewInfo & q, const ViewInfo & absmax, int32_t bs, const float * code,
                   const ViewInfo & out) {
    CudaState & st = state_of(ctx);
    DeviceGuard g(st.device);
    const bool dev = on_device(st, q, "q");
    same_side(dev, "q", on_device(st, absmax, "absmax"), "absmax", st.device);
    same_side(dev, "q", on_device(st, out, "out"), "out", st.device);
    const int64_t n = q.numel(), nb = (n + bs - 1) / bs;
    if (dev) {
        launch_q8_dequantize(q.as<uint8_t>(), absmax.as<float>(), n, bs, code256(code), out.data, out.dtype, st.sm_count,
                             st.stream);
        check_launch("the 8-bit dequantize kernel");
        return;
    }
    StreamSync sync(st);
    const size_t obytes = static_cast<size_t>(n) * qlora_dtype_size(out.dtype);
    StreamBuffer qs = st.temp(static_cast<size_t>(n), "staging q on the device");
    StreamBuffer as = st.temp(static_cast<size_t>(nb) * 4, "staging absmax on the device");
    StreamBuffer os = st.temp(obytes, "staging out on the device");
    check(cudaMemcpyAsync(qs.data(), q.data, static_cast<size_t>(n), cudaMemcpyHostToDevice, st.stream),
          "cudaMemcpyAsync (q)");
    check(cudaMemcpyAsync(as.data(), absmax.data, static_cast<size_t>(nb) * 4, cudaMemcpyHostToDevice, st.stream),
          "cudaMemcpyAsync (absmax)");
    launch_q8_dequantize(qs.as<uint8_t>(), as.as<float>(), n, bs, code256(code), os.data(), out.dtype, st.sm_count,
                         st.stream);
    check_launch("the 8-bit dequantize kernel");
    check(cudaMemcpyAsync(out.data, os.data(), obytes, cudaMemcpyDeviceToHost, st.stream), "cudaMemcpyAsync (out)");
    sync.sync("cudaStreamSynchronize (8-bit dequantize)");
}

} // namespace qlora::cuda

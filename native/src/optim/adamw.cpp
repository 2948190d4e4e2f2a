#include "optim/adamw.hpp"

#include "core/error.hpp"
#include "core/view.hpp"
#include "pager/crc32c.hpp"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <future>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#if QLORA_CUDA
#include "cuda/cuda_ops.hpp"
#endif

static_assert(std::endian::native == std::endian::little, "the optimizer state file is written little-endian");

namespace qlora::optim {

void check_adamw_params(const qlora_adamw_params & p) {
    // Raw bytes: a caller may pass any int, and loading an out-of-range value
    // as the enum type is undefined behaviour (found by fuzzing).
    const int32_t state = raw_enum(p.state);
    QLORA_CHECK_ARG(state == QLORA_OPTIM_STATE_F32 || state == QLORA_OPTIM_STATE_8BIT, "unknown state value %d", state);
    QLORA_CHECK_ARG(std::isfinite(p.lr) && p.lr >= 0.0f, "lr must be finite and >= 0, got %g", double(p.lr));
    QLORA_CHECK_ARG(p.beta1 >= 0.0f && p.beta1 < 1.0f, "beta1 must be in [0, 1), got %g", double(p.beta1));
    QLORA_CHECK_ARG(p.beta2 >= 0.0f && p.beta2 < 1.0f, "beta2 must be in [0, 1), got %g", double(p.beta2));
    QLORA_CHECK_ARG(std::isfinite(p.eps) && p.eps > 0.0f, "eps must be finite and > 0, got %g", double(p.eps));
    QLORA_CHECK_ARG(std::isfinite(p.weight_decay) && p.weight_decay >= 0.0f,
                    "weight_decay must be finite and >= 0, got %g", double(p.weight_decay));
    QLORA_CHECK_ARG(std::isfinite(p.max_grad_norm) && p.max_grad_norm >= 0.0f,
                    "max_grad_norm must be finite and >= 0 (0 = no clipping), got %g", double(p.max_grad_norm));
    QLORA_CHECK_ARG(p.bias_correction == 0 || p.bias_correction == 1, "bias_correction must be 0 or 1, got %d",
                    p.bias_correction);
}

StepConsts step_consts(const qlora_adamw_params & p, int64_t t, float gscale) {
    const double b1 = p.beta1, b2 = p.beta2, lr = p.lr;
    const double c1 = p.bias_correction ? 1.0 - std::pow(b1, static_cast<double>(t)) : 1.0;
    const double c2 = p.bias_correction ? std::sqrt(1.0 - std::pow(b2, static_cast<double>(t))) : 1.0;
    StepConsts c{};
    c.beta1 = p.beta1;
    c.beta2 = p.beta2;
    c.omb1 = static_cast<float>(1.0 - b1);
    c.omb2 = static_cast<float>(1.0 - b2);
    c.step_size = static_cast<float>(-lr * c2 / c1);
    c.eps_c2 = static_cast<float>(static_cast<double>(p.eps) * c2);
    c.decay = static_cast<float>(1.0 - lr * static_cast<double>(p.weight_decay));
    c.apply_decay = p.weight_decay > 0.0f ? 1 : 0;
    c.gscale = gscale;
    return c;
}

namespace {

struct Kernels {
    Adamw32Fn adamw32;
    Adamw8Fn  adamw8;
    SumSqFn   sumsq;
};

Kernels kernels_for(const qlora_context & ctx) {
#if defined(QLORA_X86)
    if (ctx.backend == QLORA_BACKEND_CPU) {
        if (ctx.isa >= QLORA_ISA_AVX512) return {cpu::adamw32_avx512, cpu::adamw8_avx512, cpu::sumsq_avx512};
        if (ctx.isa >= QLORA_ISA_AVX2) return {cpu::adamw32_avx2, cpu::adamw8_avx2, cpu::sumsq_avx2};
    }
#endif
    return {ref::adamw32, ref::adamw8, ref::sumsq};
}

std::string errno_text(int err) { return std::strerror(err); }

constexpr char     kMagic[8] = {'Q', 'L', 'O', 'R', 'A', 'O', 'P', 'T'};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kAlgorithmAdamW = 1;
constexpr int64_t  kHeaderBytes = 72; // then int64 numel[n_buffers], the blocks, uint32 CRC32C
constexpr int64_t  kIoChunk = INT64_C(1) << 20;
constexpr int64_t  kMaxSteps = INT64_C(1) << 62;

struct Header {
    char     magic[8];
    uint32_t version;
    uint32_t algorithm;
    uint32_t state;
    uint32_t block_elems;
    uint32_t block_bytes;
    uint32_t n_buffers;
    int64_t  step;
    float    lr, beta1, beta2, eps, weight_decay, max_grad_norm;
    int32_t  bias_correction;
    uint32_t reserved;
};
static_assert(sizeof(Header) == kHeaderBytes, "state file header layout");

} // namespace
} // namespace qlora::optim

using namespace qlora;
using namespace qlora::optim;

namespace {

// A chunk of a buffer's states, pinned for the duration of the scope.
class ChunkAccess {
public:
    ChunkAccess(const qlora_adamw & opt, const qlora_adamw::Buffer & b, int64_t c, qlora_pager_access access)
        : pager_(opt.pager.get()), id_(b.alloc_id), offset_(opt.chunk_offset(c)),
          bytes_(opt.chunk_blocks(b, c) * opt.block_bytes()) {
        ptr_ = pager_ ? static_cast<uint8_t *>(pager_->acquire(id_, offset_, bytes_, access))
                      : const_cast<uint8_t *>(b.host.data()) + offset_;
    }
    ~ChunkAccess() {
        if (pager_) {
            try { pager_->release(id_, offset_, bytes_); } catch (...) { /* cannot fail for a range we pinned */ }
        }
    }
    ChunkAccess(const ChunkAccess &) = delete;
    ChunkAccess & operator=(const ChunkAccess &) = delete;
    uint8_t * data() const { return ptr_; }

private:
    Pager *   pager_;
    int64_t   id_, offset_, bytes_;
    uint8_t * ptr_ = nullptr;
};

// Reads/writes whole byte counts, retrying on EINTR; throws IO naming `path`.
void write_all(int fd, const uint8_t * p, int64_t n, const std::string & path) {
    while (n > 0) {
        const ssize_t r = ::write(fd, p, static_cast<size_t>(std::min<int64_t>(n, INT64_C(1) << 30)));
        if (r < 0) {
            if (errno == EINTR) continue;
            const int err = errno;
            fail(QLORA_ERROR_IO, "cannot write optimizer state to '%s': %s", path.c_str(), errno_text(err).c_str());
        }
        p += r;
        n -= r;
    }
}

void read_all(int fd, uint8_t * p, int64_t n, const std::string & path) {
    while (n > 0) {
        const ssize_t r = ::read(fd, p, static_cast<size_t>(std::min<int64_t>(n, INT64_C(1) << 30)));
        if (r < 0) {
            if (errno == EINTR) continue;
            const int err = errno;
            fail(QLORA_ERROR_IO, "cannot read optimizer state '%s': %s", path.c_str(), errno_text(err).c_str());
        }
        if (r == 0) fail(QLORA_ERROR_FORMAT, "optimizer state '%s' ended early (truncated?)", path.c_str());
        p += r;
        n -= r;
    }
}

struct Fd {
    int fd = -1;
    ~Fd() {
        if (fd >= 0) ::close(fd);
    }
};

} // namespace

qlora_adamw::qlora_adamw(const qlora_adamw_params & p, std::shared_ptr<Pager> pg) : params(p), pager(std::move(pg)) {
    block_bytes_ = params.state == QLORA_OPTIM_STATE_8BIT ? kBlockBytes8 : kBlockBytesF32;
    if (pager) {
        blocks_per_chunk_ = pager->page_bytes() / block_bytes_;
        chunk_stride_ = pager->page_bytes();
    } else {
        blocks_per_chunk_ = (INT64_C(1) << 20) / block_bytes_;
        chunk_stride_ = blocks_per_chunk_ * block_bytes_;
    }
}

qlora_adamw::~qlora_adamw() {
    if (pager)
        for (auto & b : buffers) {
            try { pager->dealloc(b.alloc_id); } catch (...) { /* nothing is pinned once a call returned */ }
        }
}

int64_t qlora_adamw::chunk_blocks(const Buffer & b, int64_t c) const {
    return std::min(blocks_per_chunk_, b.n_blocks - c * blocks_per_chunk_);
}

void qlora_adamw::check_usable(const char * what) const {
    if (!failure.empty())
        fail(failure_status, "cannot %s: the optimizer is unusable since a step failed half-way (%s); load a "
             "saved state to recover", what, failure.c_str());
}

void qlora_adamw::add_buffer(int64_t numel) {
    QLORA_CHECK_ARG(numel >= 1 && numel <= (INT64_C(1) << 40), "numel must be in [1, 2^40], got %lld",
                    static_cast<long long>(numel));
    QLORA_CHECK_ARG(steps_done == 0, "buffers must be registered before the first step (step is %lld)",
                    static_cast<long long>(steps_done));
    QLORA_CHECK_ARG(buffers.size() < INT32_MAX, "too many buffers");
    Buffer b;
    b.numel = numel;
    b.n_blocks = (numel + kBlock - 1) / kBlock;
    b.n_chunks = (b.n_blocks + blocks_per_chunk_ - 1) / blocks_per_chunk_;
    // Paged: whole pages (a page is the unit of residency, so this is what a
    // budget must cover); unpaged: exactly the blocks.
    b.storage_bytes = pager ? b.n_chunks * chunk_stride_
                            : (b.n_chunks - 1) * chunk_stride_ + chunk_blocks(b, b.n_chunks - 1) * block_bytes_;
    if (pager) {
        b.alloc_id = pager->alloc(b.storage_bytes); // zero-filled
    } else {
        b.host.resize(static_cast<size_t>(b.storage_bytes));
        std::memset(b.host.data(), 0, static_cast<size_t>(b.storage_bytes));
    }
    buffers.push_back(std::move(b));
}

void qlora_adamw::states_to_host() const {
#if QLORA_CUDA
    // Moving the storage back does not change the optimizer's logical state.
    if (device_states) qlora::cuda::adamw_states_to_host(const_cast<qlora_adamw &>(*this));
#endif
}

qlora_adamw_info qlora_adamw::info() const {
    qlora_adamw_info i{};
    i.state = params.state;
    i.n_buffers = static_cast<int32_t>(buffers.size());
    for (const auto & b : buffers) {
        i.numel += b.numel;
        i.state_bytes += b.storage_bytes;
    }
    i.step = steps_done;
    i.paged = pager ? 1 : 0;
    i.failed = failure.empty() ? 0 : 1;
    return i;
}

qlora_adamw_step_info qlora_adamw::step(qlora_context & ctx, const qlora_view * pviews, const qlora_view * gviews,
                                        int32_t n_buffers) {
    check_usable("step");
    QLORA_CHECK_ARG(!buffers.empty(), "no buffers are registered (qlora_adamw_add_buffer)");
    QLORA_CHECK_ARG(n_buffers == static_cast<int32_t>(buffers.size()),
                    "n_buffers is %d but %zu buffers are registered", n_buffers, buffers.size());
    QLORA_CHECK_NOT_NULL(pviews);
    QLORA_CHECK_NOT_NULL(gviews);
#if QLORA_CUDA
    if (ctx.backend == QLORA_BACKEND_CUDA) return qlora::cuda::adamw_step(ctx, *this, pviews, gviews, n_buffers);
#endif
    QLORA_CHECK_ARG(ctx.backend == QLORA_BACKEND_REF || ctx.backend == QLORA_BACKEND_CPU,
                    "the optimizer step runs on the REF and CPU backends only");
    states_to_host();

    const size_t nb = buffers.size();
    std::vector<float *> p(nb);
    std::vector<const float *> g(nb);
    struct Range {
        uintptr_t begin, end;
        size_t    index;
        bool      grad;
    };
    std::vector<Range> ranges;
    ranges.reserve(2 * nb);
    for (size_t i = 0; i < nb; ++i) {
        const std::string pn = "params[" + std::to_string(i) + "]", gn = "grads[" + std::to_string(i) + "]";
        const ViewInfo pv = check_contiguous(&pviews[i], pn.c_str(), {QLORA_DTYPE_F32});
        const ViewInfo gv = check_contiguous(&gviews[i], gn.c_str(), {QLORA_DTYPE_F32});
        QLORA_CHECK_ARG(pv.numel() == buffers[i].numel, "%s has %lld elements but buffer %zu was registered with %lld",
                        pn.c_str(), static_cast<long long>(pv.numel()), i, static_cast<long long>(buffers[i].numel));
        QLORA_CHECK_ARG(gv.numel() == buffers[i].numel, "%s has %lld elements but buffer %zu was registered with %lld",
                        gn.c_str(), static_cast<long long>(gv.numel()), i, static_cast<long long>(buffers[i].numel));
        p[i] = pv.as<float>();
        g[i] = gv.as<const float>();
        const uintptr_t pb = reinterpret_cast<uintptr_t>(p[i]), gb = reinterpret_cast<uintptr_t>(g[i]);
        const uintptr_t bytes = static_cast<uintptr_t>(buffers[i].numel) * sizeof(float);
        ranges.push_back({pb, pb + bytes, i, false});
        ranges.push_back({gb, gb + bytes, i, true});
    }
    std::sort(ranges.begin(), ranges.end(), [](const Range & a, const Range & b) { return a.begin < b.begin; });
    for (size_t k = 1; k < ranges.size(); ++k)
        if (ranges[k].begin < ranges[k - 1].end)
            fail(QLORA_ERROR_INVALID_ARGUMENT, "%s[%zu] and %s[%zu] overlap in memory",
                 ranges[k - 1].grad ? "grads" : "params", ranges[k - 1].index, ranges[k].grad ? "grads" : "params",
                 ranges[k].index);

    const Kernels k = kernels_for(ctx);

    // Global gradient norm: float64 partial sums per kNormChunk elements, summed in order.
    std::vector<int64_t> first_chunk(nb + 1, 0);
    for (size_t i = 0; i < nb; ++i)
        first_chunk[i + 1] = first_chunk[i] + (buffers[i].numel + kNormChunk - 1) / kNormChunk;
    std::vector<double> partial(static_cast<size_t>(first_chunk[nb]));
    ctx.threads().parallel_for(first_chunk[nb], 4, [&](int64_t c0, int64_t c1, int) {
        size_t i = static_cast<size_t>(std::upper_bound(first_chunk.begin(), first_chunk.end(), c0) - first_chunk.begin()) - 1;
        for (int64_t c = c0; c < c1; ++c) {
            while (c >= first_chunk[i + 1]) ++i;
            const int64_t e0 = (c - first_chunk[i]) * kNormChunk;
            partial[static_cast<size_t>(c)] = k.sumsq(g[i] + e0, std::min(kNormChunk, buffers[i].numel - e0));
        }
    });
    double total = 0.0;
    for (double s : partial) total += s;
    if (!std::isfinite(total)) {
        for (size_t i = 0; i < nb; ++i)
            for (int64_t e = 0; e < buffers[i].numel; ++e)
                if (!std::isfinite(g[i][e]))
                    fail(QLORA_ERROR_INVALID_ARGUMENT, "grads[%zu] element %lld is %s: non-finite gradient (nothing "
                         "was updated)", i, static_cast<long long>(e), std::isnan(g[i][e]) ? "NaN" : "Inf");
        fail(QLORA_ERROR_INVALID_ARGUMENT, "the gradient norm overflowed");
    }
    const double norm = std::sqrt(total);
    float gscale = 1.0f;
    if (params.max_grad_norm > 0.0f) {
        const double coef = static_cast<double>(params.max_grad_norm) / (norm + 1e-6);
        if (coef < 1.0) gscale = static_cast<float>(coef);
    }

    if (steps_done >= kMaxSteps)
        fail(QLORA_ERROR_INVALID_ARGUMENT, "the step counter reached its limit of %lld steps", static_cast<long long>(kMaxSteps));
    const int64_t t = steps_done + 1;
    const StepConsts consts = step_consts(params, t, gscale);
    const bool eight = params.state == QLORA_OPTIM_STATE_8BIT;
    // Chunks are updated in groups: all of a buffer at once when unpaged (its
    // blocks are contiguous), else up to half the budget's pages pinned at a
    // time (at least one). Paged, the next group is pinned (paged in) on a
    // helper thread while the thread pool updates the current one, when two
    // groups fit in the budget. Results do not depend on any of this.
    const int64_t group = pager ? std::clamp<int64_t>(pager->budget_bytes() / pager->page_bytes() / 2, 1, 64)
                                : INT64_MAX;
    struct Group {
        size_t  buf;
        int64_t c0, c1;
    };
    std::vector<Group> groups;
    for (size_t i = 0; i < nb; ++i)
        for (int64_t c0 = 0; c0 < buffers[i].n_chunks; c0 += std::min(group, buffers[i].n_chunks - c0))
            groups.push_back({i, c0, c0 + std::min(group, buffers[i].n_chunks - c0)});
    using Pins = std::vector<std::unique_ptr<ChunkAccess>>;
    auto pin = [this](const Buffer & b, int64_t c0, int64_t c1) {
        Pins pins;
        for (int64_t c = c0; c < c1; ++c) pins.push_back(std::make_unique<ChunkAccess>(*this, b, c, QLORA_PAGER_READ_WRITE));
        return pins;
    };
    auto update = [&](const Group & gr, const Pins & pins) {
        const Buffer & b = buffers[gr.buf];
        struct Piece {
            uint8_t * st;
            int64_t   block0; // first block of the piece in the buffer
            int64_t   blocks;
        };
        std::vector<Piece> pieces;
        if (pager) {
            for (int64_t c = gr.c0; c < gr.c1; ++c)
                pieces.push_back({pins[static_cast<size_t>(c - gr.c0)]->data(), c * blocks_per_chunk_, chunk_blocks(b, c)});
        } else {
            // Unpaged chunks are back to back: one piece.
            pieces.push_back({const_cast<uint8_t *>(b.host.data()) + chunk_offset(gr.c0), gr.c0 * blocks_per_chunk_,
                              (gr.c1 - gr.c0 - 1) * blocks_per_chunk_ + chunk_blocks(b, gr.c1 - 1)});
        }
        int64_t total = 0;
        for (const Piece & pc : pieces) total += pc.blocks;
        float * pb = p[gr.buf];
        const float * gb = g[gr.buf];
        ctx.threads().parallel_for(total, 8, [&](int64_t b0, int64_t b1, int) {
            int64_t base = 0;
            for (const Piece & pc : pieces) {
                const int64_t lo = std::max(b0, base), hi = std::min(b1, base + pc.blocks);
                if (lo < hi) {
                    const int64_t e0 = (pc.block0 + (lo - base)) * kBlock;
                    const int64_t n = std::min(b.numel, (pc.block0 + (hi - base)) * kBlock) - e0;
                    uint8_t * st = pc.st + (lo - base) * block_bytes_;
                    if (eight)
                        k.adamw8(consts, pb + e0, gb + e0, n, st);
                    else
                        k.adamw32(consts, pb + e0, gb + e0, n, st);
                }
                base += pc.blocks;
            }
        });
    };
    try {
        const bool overlap = pager && pager->budget_bytes() / pager->page_bytes() >= 2 * group;
        if (!pager) {
            for (const Group & gr : groups) update(gr, Pins{});
        } else if (!overlap) { // a budget of one page: no room to pin ahead
            for (const Group & gr : groups) update(gr, pin(buffers[gr.buf], gr.c0, gr.c1));
        } else {
            auto pin_async = [&](const Group & gr) {
                return std::async(std::launch::async, pin, std::cref(buffers[gr.buf]), gr.c0, gr.c1);
            };
            std::future<Pins> next = pin_async(groups[0]);
            for (size_t q = 0; q < groups.size(); ++q) {
                Pins current = next.get();
                if (q + 1 < groups.size()) next = pin_async(groups[q + 1]);
                update(groups[q], current);
            } // `current` releases its pages here, before the next group is taken
        }
    } catch (const Error & e) {
        failure = "step " + std::to_string(t) + ": " + e.what();
        failure_status = e.status();
        throw;
    } catch (const std::exception & e) {
        failure = "step " + std::to_string(t) + ": " + e.what();
        failure_status = QLORA_ERROR_INTERNAL;
        throw;
    }
    steps_done = t;
    qlora_adamw_step_info out{};
    out.step = t;
    out.grad_norm = norm;
    out.clip_scale = gscale;
    return out;
}

void qlora_adamw::save(const std::string & path) const {
    check_usable("save");
    states_to_host();
    QLORA_CHECK_ARG(!path.empty(), "path must not be empty");
    std::string tmp = path + ".tmp-XXXXXX";
    Fd f;
    f.fd = ::mkostemp(tmp.data(), O_CLOEXEC);
    if (f.fd < 0) {
        const int err = errno;
        fail(QLORA_ERROR_IO, "cannot create a temporary file next to '%s': %s", path.c_str(), errno_text(err).c_str());
    }
    try {
        Header h{};
        std::memcpy(h.magic, kMagic, sizeof(kMagic));
        h.version = kVersion;
        h.algorithm = kAlgorithmAdamW;
        h.state = static_cast<uint32_t>(params.state);
        h.block_elems = static_cast<uint32_t>(kBlock);
        h.block_bytes = static_cast<uint32_t>(block_bytes_);
        h.n_buffers = static_cast<uint32_t>(buffers.size());
        h.step = steps_done;
        h.lr = params.lr;
        h.beta1 = params.beta1;
        h.beta2 = params.beta2;
        h.eps = params.eps;
        h.weight_decay = params.weight_decay;
        h.max_grad_norm = params.max_grad_norm;
        h.bias_correction = params.bias_correction;
        std::vector<uint8_t> head(sizeof(Header) + buffers.size() * sizeof(int64_t));
        std::memcpy(head.data(), &h, sizeof(Header));
        for (size_t i = 0; i < buffers.size(); ++i)
            std::memcpy(head.data() + sizeof(Header) + i * sizeof(int64_t), &buffers[i].numel, sizeof(int64_t));
        uint32_t crc = crc32c(head.data(), head.size());
        write_all(f.fd, head.data(), static_cast<int64_t>(head.size()), tmp);
        for (const Buffer & b : buffers)
            for (int64_t c = 0; c < b.n_chunks; ++c) {
                const int64_t bytes = chunk_blocks(b, c) * block_bytes_;
                ChunkAccess chunk(*this, b, c, QLORA_PAGER_READ);
                crc = crc32c_update(crc, chunk.data(), static_cast<size_t>(bytes));
                write_all(f.fd, chunk.data(), bytes, tmp);
            }
        write_all(f.fd, reinterpret_cast<const uint8_t *>(&crc), sizeof(crc), tmp);
        if (::fsync(f.fd) != 0) {
            const int err = errno;
            fail(QLORA_ERROR_IO, "cannot fsync '%s': %s", tmp.c_str(), errno_text(err).c_str());
        }
        const int fd = f.fd;
        f.fd = -1;
        if (::close(fd) != 0) {
            const int err = errno;
            fail(QLORA_ERROR_IO, "cannot close '%s': %s", tmp.c_str(), errno_text(err).c_str());
        }
        if (::rename(tmp.c_str(), path.c_str()) != 0) {
            const int err = errno;
            fail(QLORA_ERROR_IO, "cannot rename '%s' to '%s': %s", tmp.c_str(), path.c_str(), errno_text(err).c_str());
        }
    } catch (...) {
        ::unlink(tmp.c_str());
        throw;
    }
    // Make the rename durable (best effort: not every file system syncs directories).
    const std::string parent = std::filesystem::path(path).parent_path().string();
    const std::string dir = parent.empty() ? std::string(".") : parent;
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        ::fsync(dfd);
        ::close(dfd);
    }
}

void qlora_adamw::load(const std::string & path) {
    QLORA_CHECK_ARG(!path.empty(), "path must not be empty");
    states_to_host();
    const char * ps = path.c_str();
    Fd f;
    f.fd = ::open(ps, O_RDONLY | O_CLOEXEC);
    if (f.fd < 0) {
        const int err = errno;
        fail(QLORA_ERROR_IO, "cannot open optimizer state '%s': %s", ps, errno_text(err).c_str());
    }
    struct stat st;
    if (::fstat(f.fd, &st) != 0) {
        const int err = errno;
        fail(QLORA_ERROR_IO, "cannot stat optimizer state '%s': %s", ps, errno_text(err).c_str());
    }
    const int64_t size = static_cast<int64_t>(st.st_size);
    if (size < kHeaderBytes + 4)
        fail(QLORA_ERROR_FORMAT, "'%s' is %lld bytes, too small to be an optimizer state file", ps,
             static_cast<long long>(size));
    Header h;
    read_all(f.fd, reinterpret_cast<uint8_t *>(&h), kHeaderBytes, path);
    if (std::memcmp(h.magic, kMagic, sizeof(kMagic)) != 0)
        fail(QLORA_ERROR_FORMAT, "'%s' is not an optimizer state file (bad magic)", ps);
    if (h.version != kVersion)
        fail(QLORA_ERROR_FORMAT, "'%s' has format version %u; this library reads version %u", ps, h.version, kVersion);
    if (h.algorithm != kAlgorithmAdamW)
        fail(QLORA_ERROR_FORMAT, "'%s' holds the state of optimizer %u, not AdamW (%u)", ps, h.algorithm,
             kAlgorithmAdamW);
    if (h.state != QLORA_OPTIM_STATE_F32 && h.state != QLORA_OPTIM_STATE_8BIT)
        fail(QLORA_ERROR_FORMAT, "'%s' has unknown state type %u", ps, h.state);
    auto type_name = [](uint32_t s) { return s == QLORA_OPTIM_STATE_8BIT ? "8-bit" : "32-bit"; };
    if (h.state != static_cast<uint32_t>(params.state))
        fail(QLORA_ERROR_INVALID_ARGUMENT, "'%s' holds %s states but this optimizer uses %s states", ps,
             type_name(h.state), type_name(static_cast<uint32_t>(params.state)));
    const uint32_t want_block_bytes = static_cast<uint32_t>(block_bytes_);
    if (h.block_elems != kBlock || h.block_bytes != want_block_bytes)
        fail(QLORA_ERROR_FORMAT, "'%s' has blocks of %u elements / %u bytes; expected %lld / %u", ps, h.block_elems,
             h.block_bytes, static_cast<long long>(kBlock), want_block_bytes);
    if (h.n_buffers != buffers.size())
        fail(QLORA_ERROR_INVALID_ARGUMENT, "'%s' holds %u buffers but this optimizer has %zu registered", ps,
             h.n_buffers, buffers.size());
    if (h.step < 0) fail(QLORA_ERROR_FORMAT, "'%s' has a negative step count %lld", ps, static_cast<long long>(h.step));
    // No run takes 2^62 steps; a count near INT64_MAX would overflow the next step (found by fuzzing).
    if (h.step >= kMaxSteps)
        fail(QLORA_ERROR_FORMAT, "'%s' has step count %lld; the limit is %lld", ps, static_cast<long long>(h.step),
             static_cast<long long>(kMaxSteps));
    qlora_adamw_params fp = params;
    fp.lr = h.lr;
    fp.beta1 = h.beta1;
    fp.beta2 = h.beta2;
    fp.eps = h.eps;
    fp.weight_decay = h.weight_decay;
    fp.max_grad_norm = h.max_grad_norm;
    fp.bias_correction = h.bias_correction;
    try {
        check_adamw_params(fp);
    } catch (const Error & e) {
        fail(QLORA_ERROR_FORMAT, "'%s' holds invalid hyper-parameters: %s", ps, e.what());
    }
    const int64_t nbuf = static_cast<int64_t>(buffers.size());
    std::vector<uint8_t> head(static_cast<size_t>(kHeaderBytes + nbuf * 8));
    if (size < static_cast<int64_t>(head.size()) + 4)
        fail(QLORA_ERROR_FORMAT, "'%s' is %lld bytes, too small for %lld buffers", ps, static_cast<long long>(size),
             static_cast<long long>(nbuf));
    std::memcpy(head.data(), &h, kHeaderBytes);
    read_all(f.fd, head.data() + kHeaderBytes, nbuf * 8, path);
    int64_t expected = static_cast<int64_t>(head.size()) + 4;
    for (int64_t i = 0; i < nbuf; ++i) {
        int64_t numel;
        std::memcpy(&numel, head.data() + kHeaderBytes + i * 8, 8);
        const Buffer & b = buffers[static_cast<size_t>(i)];
        if (numel != b.numel)
            fail(QLORA_ERROR_INVALID_ARGUMENT, "'%s': buffer %lld has %lld elements in the file but %lld in this "
                 "optimizer", ps, static_cast<long long>(i), static_cast<long long>(numel),
                 static_cast<long long>(b.numel));
        expected += b.n_blocks * block_bytes_;
    }
    if (size != expected)
        fail(QLORA_ERROR_FORMAT, "'%s' is %lld bytes but its header describes %lld (truncated or trailing data)", ps,
             static_cast<long long>(size), static_cast<long long>(expected));

    // Pass 1: the checksum of everything, before touching any state.
    const uint32_t head_crc = crc32c(head.data(), head.size());
    uint32_t crc = head_crc;
    std::vector<uint8_t> io(static_cast<size_t>(kIoChunk));
    for (int64_t left = size - 4 - static_cast<int64_t>(head.size()); left > 0;) {
        const int64_t n = std::min(left, kIoChunk);
        read_all(f.fd, io.data(), n, path);
        crc = crc32c_update(crc, io.data(), static_cast<size_t>(n));
        left -= n;
    }
    uint32_t stored;
    read_all(f.fd, reinterpret_cast<uint8_t *>(&stored), 4, path);
    if (crc != stored)
        fail(QLORA_ERROR_FORMAT, "'%s' is corrupted: CRC32C 0x%08x, the file says 0x%08x", ps, crc, stored);

    // Pass 2: the states, straight into their storage.
    if (::lseek(f.fd, static_cast<off_t>(head.size()), SEEK_SET) < 0) {
        const int err = errno;
        fail(QLORA_ERROR_IO, "cannot seek in '%s': %s", ps, errno_text(err).c_str());
    }
    crc = head_crc;
    try {
        for (const Buffer & b : buffers)
            for (int64_t c = 0; c < b.n_chunks; ++c) {
                const int64_t bytes = chunk_blocks(b, c) * block_bytes_;
                ChunkAccess chunk(*this, b, c, QLORA_PAGER_OVERWRITE);
                read_all(f.fd, chunk.data(), bytes, path);
                crc = crc32c_update(crc, chunk.data(), static_cast<size_t>(bytes));
            }
        if (crc != stored)
            fail(QLORA_ERROR_FORMAT, "'%s' changed while it was being loaded (CRC32C 0x%08x, expected 0x%08x)", ps, crc,
                 stored);
    } catch (const Error & e) {
        failure = std::string("load: ") + e.what();
        failure_status = e.status();
        throw;
    }
    params = fp;
    steps_done = h.step;
    failure.clear();
    failure_status = QLORA_OK;
}

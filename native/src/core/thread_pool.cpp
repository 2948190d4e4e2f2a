#include "core/thread_pool.hpp"

#include <algorithm>
#include <chrono>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define QLORA_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define QLORA_CPU_RELAX() asm volatile("yield")
#else
#define QLORA_CPU_RELAX() ((void)0)
#endif

namespace qlora {

namespace {
// How long a worker waiting for the next job, or the caller waiting for the
// workers, spins before it sleeps on the futex. Short: after the last call of
// a burst the spinning worker holds a core that the caller's next work (e.g.
// libtorch's own threads, between our kernels in a training step) needs.
// 16384 pauses (~330 us on Zen 5, where a pause is ~20 ns) cost a small
// model's training step 30-45 %; ~20 us covers back-to-back calls.
constexpr auto kSpinTime = std::chrono::microseconds(20);

// Spins while pred() holds, for at most kSpinTime; returns pred()'s last value.
template <class Pred>
bool spin_while(Pred pred) {
    const auto until = std::chrono::steady_clock::now() + kSpinTime;
    for (;;) {
        for (int i = 0; i < 64; ++i) {
            if (!pred()) return false;
            QLORA_CPU_RELAX();
        }
        if (std::chrono::steady_clock::now() >= until) return pred();
    }
}
} // namespace

void split_range(int64_t n, int64_t grain, int parts, int p, int64_t & begin, int64_t & end) {
    if (grain < 1) grain = 1;
    const int64_t units = (n + grain - 1) / grain;
    const int64_t base = units / parts, extra = units % parts;
    const int64_t ub = p * base + std::min<int64_t>(p, extra);
    const int64_t ue = ub + base + (p < extra ? 1 : 0);
    begin = std::min(n, ub * grain);
    end = std::min(n, ue * grain);
}

ChunkQueue::ChunkQueue(int64_t n, int64_t chunk, int parts)
    : n_(std::max<int64_t>(n, 0)), chunk_(std::max<int64_t>(chunk, 1)), runs_(static_cast<size_t>(std::max(parts, 1))) {
    constexpr int64_t kMaxChunks = int64_t{1} << 31; // chunk numbers fit in 32 bits
    if ((n_ + chunk_ - 1) / chunk_ > kMaxChunks) chunk_ = (n_ + kMaxChunks - 1) / kMaxChunks;
    const int64_t chunks = (n_ + chunk_ - 1) / chunk_;
    for (size_t p = 0; p < runs_.size(); ++p) {
        int64_t b, e;
        split_range(chunks, 1, static_cast<int>(runs_.size()), static_cast<int>(p), b, e);
        runs_[p].front_back.store(static_cast<uint64_t>(b) << 32 | static_cast<uint64_t>(e), std::memory_order_relaxed);
    }
}

bool ChunkQueue::next(int p, int64_t & begin, int64_t & end) {
    auto front = [](uint64_t v) { return static_cast<int64_t>(v >> 32); };
    auto back = [](uint64_t v) { return static_cast<int64_t>(v & 0xffffffffu); };
    int64_t c0 = -1, c1 = -1;
    std::atomic<uint64_t> & own = runs_[static_cast<size_t>(p)].front_back;
    for (uint64_t v = own.load(std::memory_order_acquire); front(v) < back(v);) {
        const int64_t take = std::max<int64_t>(1, (back(v) - front(v)) / 2);
        if (own.compare_exchange_weak(v, v + (static_cast<uint64_t>(take) << 32), std::memory_order_acq_rel)) {
            c0 = front(v);
            c1 = c0 + take;
            break;
        }
    }
    while (c0 < 0) { // a single chunk from the back of the run with the most left
        Run * most = nullptr;
        int64_t most_left = 0;
        for (Run & r : runs_) {
            const uint64_t v = r.front_back.load(std::memory_order_acquire);
            if (back(v) - front(v) > most_left) {
                most_left = back(v) - front(v);
                most = &r;
            }
        }
        if (!most) return false;
        for (uint64_t v = most->front_back.load(std::memory_order_acquire); front(v) < back(v);)
            if (most->front_back.compare_exchange_weak(v, v - 1, std::memory_order_acq_rel)) {
                c1 = back(v);
                c0 = c1 - 1;
                break;
            }
    }
    begin = c0 * chunk_;
    end = std::min(n_, c1 * chunk_);
    return true;
}

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
    workers_.reserve(static_cast<size_t>(n_threads_ - 1));
    for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
    stop_.store(true, std::memory_order_release);
    generation_.fetch_add(1, std::memory_order_acq_rel);
    generation_.notify_all();
    for (auto & t : workers_) t.join();
}

void ThreadPool::execute(int index) {
    try {
        (*job_)(index, n_threads_);
    } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex_);
        if (!error_) error_ = std::current_exception();
    }
}

void ThreadPool::worker_loop(int index) {
    uint64_t seen = 0;
    for (;;) {
        uint64_t g = generation_.load(std::memory_order_acquire);
        spin_while([&] { return (g = generation_.load(std::memory_order_acquire)) == seen; });
        while (g == seen) {
            generation_.wait(seen, std::memory_order_acquire);
            g = generation_.load(std::memory_order_acquire);
        }
        seen = g;
        if (stop_.load(std::memory_order_acquire)) return;
        execute(index);
        if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
    }
}

void ThreadPool::run(const std::function<void(int, int)> & fn) {
    if (n_threads_ == 1) {
        fn(0, 1);
        return;
    }
    job_ = &fn;
    error_ = nullptr;
    pending_.store(n_threads_ - 1, std::memory_order_release);
    generation_.fetch_add(1, std::memory_order_acq_rel);
    generation_.notify_all();
    execute(0);
    int left = pending_.load(std::memory_order_acquire);
    spin_while([&] { return (left = pending_.load(std::memory_order_acquire)) != 0; });
    while (left != 0) {
        pending_.wait(left, std::memory_order_acquire);
        left = pending_.load(std::memory_order_acquire);
    }
    job_ = nullptr;
    if (error_) {
        auto e = error_;
        error_ = nullptr;
        std::rethrow_exception(e);
    }
}

void ThreadPool::parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t, int)> & fn) {
    if (n <= 0) return;
    const int64_t units = (n + std::max<int64_t>(grain, 1) - 1) / std::max<int64_t>(grain, 1);
    const int parts = static_cast<int>(std::min<int64_t>(n_threads_, units));
    if (parts <= 1) {
        fn(0, n, 0);
        return;
    }
    run([&](int t, int) {
        if (t >= parts) return;
        int64_t b, e;
        split_range(n, grain, parts, t, b, e);
        if (b < e) fn(b, e, t);
    });
}

} // namespace qlora

// One pool of worker threads per context, sized by the caller.
//
// parallel_for splits work statically (thread t of n always gets the same
// share for the same problem), so results are deterministic for a given
// thread count; a ChunkQueue hands work out as the threads get done, for work
// whose results do not depend on the thread that computes them.
// Idle workers spin briefly and then sleep on a futex (std::atomic::wait), so
// they do not compete with libtorch's threads between calls.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace qlora {

class ThreadPool {
public:
    // n_threads counts the calling thread: n_threads - 1 workers are started.
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool &) = delete;
    ThreadPool & operator=(const ThreadPool &) = delete;

    int size() const { return n_threads_; }

    // Runs fn(thread_index, n_threads) once on every thread (the caller is
    // thread 0) and waits. The first exception thrown is rethrown here.
    void run(const std::function<void(int, int)> & fn);

    // Splits [0, n) into size() contiguous ranges (at most, never empty),
    // aligned to `grain`, and runs fn(begin, end, thread_index) on each.
    void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t, int)> & fn);

private:
    void worker_loop(int index);
    void execute(int index);

    int                               n_threads_;
    std::vector<std::thread>          workers_;
    std::atomic<uint64_t>             generation_{0};
    std::atomic<int>                  pending_{0};
    std::atomic<bool>                 stop_{false};
    const std::function<void(int, int)> * job_ = nullptr;
    std::mutex                        error_mutex_;
    std::exception_ptr                error_;
};

// Static split of [0, n) among `parts` parts aligned to `grain`: part p gets
// [begin, end). Empty when p has nothing to do.
void split_range(int64_t n, int64_t grain, int parts, int p, int64_t & begin, int64_t & end);

// [0, n) handed out to `parts` threads as their work gets done, in whole
// chunks of `chunk` indices: part p owns the p-th of `parts` contiguous runs
// of chunks and takes from its front half of what is left of it (at least a
// chunk) per call; once its run is used up it takes single chunks from the
// back of the run with the most left. Every chunk is handed out exactly once.
// Which thread runs an index varies from call to call, so results stay
// deterministic only where an index's result does not depend on the thread.
class ChunkQueue {
public:
    ChunkQueue(int64_t n, int64_t chunk, int parts);
    // The next range [begin, end) for part p; false once nothing is left.
    bool next(int p, int64_t & begin, int64_t & end);

private:
    struct alignas(64) Run {
        std::atomic<uint64_t> front_back{0}; // front chunk << 32 | end chunk
    };
    int64_t          n_, chunk_;
    std::vector<Run> runs_;
};

} // namespace qlora

// parallel_blocks: blocks of work on a persistent pool of threads (every native kernel's passes).
//
// Why a pool: the solver and the bounds call parallel_blocks ~300 times per match at F = 16384
// (each pass of the auction is one call); with 16 threads, starting and joining 15 threads a
// call is ~3000 thread starts a match, tens of milliseconds on a GPU machine's host where the
// whole match should take less than 50. Parked workers are woken instead.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>
#ifndef _WIN32
#include <unistd.h>
#endif

namespace mechperm {

namespace detail {

inline int64_t process_id() {
#ifdef _WIN32
    return 0;
#else
    return int64_t(getpid());
#endif
}

// Set while a thread runs a pool job's blocks: a nested parallel_blocks runs on that thread alone.
inline thread_local bool in_pool_job = false;

// Waits in a spin loop: a hint to the core (x86 pause, ARM yield), nothing elsewhere.
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

class ThreadPool {
public:
    using Body = void (*)(void* ctx, int64_t block);

    explicit ThreadPool(int64_t pid) : pid_(pid) {}

    int64_t pid() const { return pid_; }

    // Runs body(ctx, b) for b in [0, count) on `threads` threads, the caller one of them. False
    // (nothing run) if another thread is using the pool: the caller then starts its own.
    // spin: the caller and the workers wait for each other, and the workers for the next job,
    // in a spin loop for a while before they sleep (jobs that come every few microseconds).
    bool run(int64_t count, int threads, Body body, void* ctx, bool spin) {
        std::unique_lock<std::mutex> job(job_mutex_, std::try_to_lock);
        if (!job.owns_lock()) return false;
        const int helpers = threads - 1;
        while (int(workers_.size()) < helpers) {
            const int index = int(workers_.size());
            workers_.emplace_back([this, index] { work(index); });
        }
        {
            std::lock_guard<std::mutex> lock(mutex_);
            body_ = body;
            ctx_ = ctx;
            count_ = count;
            next_.store(0);
            wanted_ = helpers;
            spin_ = spin;
            active_.store(helpers);
            generation_.store(generation_.load() + 1);
        }
        wake_.notify_all();
        blocks(body, ctx, count);
        for (int spins = 0; active_.load() != 0; ++spins) {
            if (spin && spins < kSpins) {
                cpu_relax();
                continue;
            }
            std::unique_lock<std::mutex> lock(mutex_);
            done_.wait(lock, [this] { return active_.load() == 0; });
        }
        return true;
    }

private:
    // Pauses (~0.1 ms) a spinning job's threads wait before they sleep: the auction's scans
    // ahead hand out a job every few tens of microseconds, and a sleeping thread takes about
    // that long to wake (2 threads on this VM: the scans ahead then lost to one thread).
    static constexpr int kSpins = 4096;

    void blocks(Body body, void* ctx, int64_t count) {
        in_pool_job = true;
        for (int64_t b = next_++; b < count; b = next_++) body(ctx, b);
        in_pool_job = false;
    }

    void work(int index) {
        uint64_t seen = 0;
        bool spin = false;  // the last job's
        while (true) {
            for (int spins = 0; spin && spins < kSpins && generation_.load() == seen; ++spins) cpu_relax();
            Body body;
            void* ctx;
            int64_t count;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] { return generation_.load() != seen; });
                // the job's fields and its generation read together (a later job may have begun)
                seen = generation_.load();
                spin = spin_;
                if (index >= wanted_) continue;  // this job asked for fewer threads
                body = body_;
                ctx = ctx_;
                count = count_;
            }
            blocks(body, ctx, count);
            if (active_.fetch_sub(1) == 1) {
                std::lock_guard<std::mutex> lock(mutex_);
                done_.notify_one();
            }
        }
    }

    const int64_t pid_;
    std::mutex job_mutex_;  // one job at a time
    std::mutex mutex_;      // the job's fields; generation_ changes under it
    std::condition_variable wake_, done_;
    std::vector<std::thread> workers_;  // parked in work(); never joined (see pool())
    std::atomic<uint64_t> generation_{0};
    Body body_ = nullptr;
    void* ctx_ = nullptr;
    int64_t count_ = 0;
    int wanted_ = 0;
    bool spin_ = false;
    std::atomic<int> active_{0};
    std::atomic<int64_t> next_{0};
};

// The process's pool, made on first use and never destroyed (its workers stay parked until the
// process exits). A child made by fork() has none of its parent's workers: it makes its own.
inline ThreadPool* pool() {
    static std::atomic<ThreadPool*> current{nullptr};
    const int64_t pid = process_id();
    ThreadPool* p = current.load();
    while (p == nullptr || p->pid() != pid) {
        ThreadPool* fresh = new ThreadPool(pid);
        if (current.compare_exchange_strong(p, fresh)) return fresh;  // the old one is leaked
        delete fresh;  // another thread made one first: p now holds it
    }
    return p;
}

}  // namespace detail

// Runs body(block) for blocks 0..count-1 on `threads` threads (a shared counter balances them).
// spin: see ThreadPool::run (for jobs that follow one another within microseconds).
template <class F>
void parallel_blocks(int64_t count, int threads, F&& body, bool spin = false) {
    threads = int(std::max<int64_t>(1, std::min<int64_t>(threads, count)));
    if (threads == 1 || detail::in_pool_job) {
        for (int64_t b = 0; b < count; ++b) body(b);
        return;
    }
    using Fn = std::remove_reference_t<F>;
    auto call = [](void* ctx, int64_t b) { (*static_cast<Fn*>(ctx))(b); };
    if (detail::pool()->run(count, threads, call, const_cast<void*>(static_cast<const void*>(&body)), spin)) return;
    // The pool is busy (parallel_blocks from several threads at once): threads of our own.
    std::atomic<int64_t> next{0};
    auto work = [&] {
        for (int64_t b = next++; b < count; b = next++) body(b);
    };
    std::vector<std::thread> own;
    for (int t = 1; t < threads; ++t) own.emplace_back(work);
    work();
    for (auto& t : own) t.join();
}

// First position in [0, count) where bad(k) holds, or -1; chunks on `threads` threads (the
// checks of every cost and index on each solve: one pass over the arcs).
template <class F>
int64_t first_bad(int64_t count, int threads, F&& bad) {
    constexpr int64_t kChunk = int64_t(1) << 16;
    const int64_t chunks = (count + kChunk - 1) / kChunk;
    std::vector<int64_t> hit(chunks, -1);
    parallel_blocks(chunks, std::max(1, threads), [&](int64_t c) {
        for (int64_t k = c * kChunk, e = std::min(count, k + kChunk); k < e; ++k)
            if (bad(k)) {
                hit[c] = k;
                return;
            }
    });
    for (int64_t h : hit)
        if (h >= 0) return h;
    return -1;
}

}  // namespace mechperm

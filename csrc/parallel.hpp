// A minimal thread pool for the kernels of screen.cpp and topk.cpp: plain std::thread.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

namespace mechperm {

// Runs body(block) for blocks 0..count-1 on `threads` threads (a shared counter balances them).
template <class F>
void parallel_blocks(int64_t count, int threads, F&& body) {
    threads = int(std::max<int64_t>(1, std::min<int64_t>(threads, count)));
    if (threads == 1) {
        for (int64_t b = 0; b < count; ++b) body(b);
        return;
    }
    std::atomic<int64_t> next{0};
    auto work = [&] {
        for (int64_t b = next++; b < count; b = next++) body(b);
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
}

}  // namespace mechperm

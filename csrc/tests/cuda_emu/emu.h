// CPU emulation of the CUDA execution model, just enough to run the kernels of
// csrc/cuda/*.cu unchanged on a machine without a GPU (tests/toolchain/test_cuda_emulated.py).
//
// Each CUDA thread of a block is a real std::thread, so the kernels' own indexing,
// reductions, __syncthreads placement and warp shuffles run as written, with real
// concurrency between the threads of a block. What this cannot show: the GPU memory
// model, warp scheduling, performance, nvcc's code generation (e.g. nvcc contracts
// a * b + c into one FMA unless an explicit __f*_rn intrinsic is used; this file, built
// with -ffp-contract=off, rounds every operation). A missing barrier is only caught when
// this run's interleaving of the threads exposes the race.
//
// Beyond running the kernels, the emulator reports what a GPU would silently get wrong:
// a __syncthreads or full-mask shuffle not reached by every thread of its group, a kernel
// reading __shared__ memory its block never wrote (poisoned with NaN), launch sizes the
// device refuses, and (by aborting the process) a deadlock on mismatched barriers.
//
// Usage: include this header, then the .cu file (one kernel file per translation unit,
// one translation unit per shared library), and launch with emu::launch.
#pragma once

// NVRTC's view of the .cu files: no <cuda_runtime.h>, no host launchers with <<<>>>.
#define __CUDACC_RTC__ 1

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <math.h>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

// Every library built from this header (one per kernel file) is loaded into the same test
// process. Hidden visibility keeps each library's emulator state (fault log, launch log,
// thread-locals) its own: default-visibility inline variables would be merged across
// libraries by the dynamic loader (STB_GNU_UNIQUE), even when loaded RTLD_LOCAL.
#pragma GCC visibility push(hidden)

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
// thread_local: every emulated CUDA thread sees its own indices, as on the device.
inline thread_local dim3 threadIdx{0, 0, 0}, blockIdx{0, 0, 0}, blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// __restrict__ is left to g++, which understands it natively.
//
// Blocks run one after another, so one static copy of each __shared__ array serves every
// block. The arrays are gathered in one linker section, which launch() fills with 0xFF
// bytes (NaN as float/double, -1 as int) before each block: a kernel that reads shared
// memory it did not write in the same block then sees garbage, as on a GPU, rather than
// the previous block's values.
#define __shared__ static __attribute__((section("emu_shared")))
// The linker defines __start_/__stop_ symbols around a section named like a C identifier;
// weak, because a kernel file without __shared__ arrays has no such section (null then).
extern "C" __attribute__((weak)) char __start_emu_shared[], __stop_emu_shared[];

struct __align__(8) float2 {
  float x, y;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }

// The explicit round-to-nearest intrinsics: one IEEE operation each. The build must use
// -ffp-contract=off, or g++ could fuse __fadd_rn(__fmul_rn(a, b), c) into an FMA, which
// the device never does for these intrinsics.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }

namespace emu {

// Faults are emulation-detected kernel errors (undefined behaviour on the device that a
// GPU would not report, e.g. a __syncthreads that some threads never reach). The first
// message is kept for emu_last_error(); a launch that saw any fault returns kFault.
constexpr int kOk = 0, kFault = 1, kInvalidConfiguration = 9;  // 9: cudaErrorInvalidConfiguration
inline std::mutex g_fault_mutex;
inline std::string g_fault;
inline std::atomic<int> g_faults{0};

inline void fault(const std::string& what) {
  std::lock_guard<std::mutex> lock(g_fault_mutex);
  if (g_faults.fetch_add(1) == 0) g_fault = what;
}

// A barrier over a group of emulated threads (a block for __syncthreads, a warp for the
// shuffles) that also notices threads that returned from the kernel. On the device a
// __syncthreads not reached by every thread of the block, or a full-mask shuffle naming a
// lane that has exited, is undefined behaviour; here an exited thread drops out of the
// barrier (so the others do not deadlock) and any phase completed while some thread had
// exited and others were still synchronising is reported.
class Group {
  struct OnPhase {
    Group* g;
    void operator()() noexcept {
      if (g->waiters_.load() > 0 && g->exited_.load() > 0)
        fault(std::string(g->what_) + ": not every thread of the group reached it "
              "(some had already returned from the kernel)");
      g->waiters_.store(0);
    }
  };
  std::atomic<int> waiters_{0}, exited_{0};
  const char* what_;
  std::barrier<OnPhase> bar_;

 public:
  Group(std::ptrdiff_t n, const char* what) : what_(what), bar_(n, OnPhase{this}) {}
  void wait() {
    waiters_.fetch_add(1);
    bar_.arrive_and_wait();
  }
  void leave() {
    exited_.fetch_add(1);
    bar_.arrive_and_drop();
  }
};

// One warp: its barrier and the lanes' shuffle slots. Two slot sets, used alternately,
// make one barrier per shuffle enough: a lane can only overwrite set s again after the
// next shuffle's barrier, which every lane reaches only once it has read set s.
struct Warp {
  Group group;
  int lanes;
  alignas(8) unsigned char slot[2][32][8];
  explicit Warp(int n) : group(n, "__shfl_xor_sync (full mask)"), lanes(n) {}
};

struct Block {
  std::optional<Group> sync;
  std::vector<std::unique_ptr<Warp>> warps;
};

inline thread_local Block* t_block = nullptr;
inline thread_local int t_tid = 0;          // linear thread index in the block
inline thread_local int t_shfl_parity = 0;  // which slot set the next shuffle uses

inline void poison_shared() {
  char *lo = __start_emu_shared, *hi = __stop_emu_shared;  // null when no __shared__ at all
  if (lo && hi > lo) std::memset(lo, 0xFF, (size_t)(hi - lo));
}

// Launch log, so that tests can check the launchers' grid and block sizes.
struct LaunchRecord {
  unsigned grid[3], block[3];
};
inline std::mutex g_log_mutex;
inline std::vector<LaunchRecord> g_log;

inline unsigned long long deadlock_seconds() {
  const char* s = std::getenv("EMU_DEADLOCK_SECONDS");
  return s ? std::strtoull(s, nullptr, 10) : 120;
}

// Runs body() as the kernel grid `grid` of blocks `block`: blocks one at a time (in
// reverse order, so a kernel relying on block 0 running first fails), all threads of a
// block concurrently. The block's threads are created once per launch and reused for
// every block: thread creation, not the kernels' work, dominates the emulation's cost.
// Returns kOk, kFault, or kInvalidConfiguration for the sizes the device refuses.
inline int launch(dim3 grid, dim3 block, const std::function<void()>& body) {
  const unsigned long long nthreads = (unsigned long long)block.x * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || nthreads == 0 || nthreads > 1024 ||
      block.x > 1024 || block.y > 1024 || block.z > 64 || grid.x > 0x7fffffffu ||
      grid.y > 65535 || grid.z > 65535)
    return kInvalidConfiguration;
  {
    std::lock_guard<std::mutex> lock(g_log_mutex);
    g_log.push_back({{grid.x, grid.y, grid.z}, {block.x, block.y, block.z}});
  }
  const int faults_before = g_faults.load();
  const unsigned long long nblocks = (unsigned long long)grid.x * grid.y * grid.z;
  const int n = (int)nthreads, nwarps = (n + 31) / 32;

  Block blk;
  unsigned long long next = 0;  // blocks started so far; advanced between blocks
  auto fresh_block = [&]() noexcept {
    poison_shared();
    blk.sync.emplace(n, "__syncthreads");
    blk.warps.clear();
    for (int w = 0; w < nwarps; ++w)
      blk.warps.emplace_back(std::make_unique<Warp>(std::min(32, n - 32 * w)));
  };
  struct Between {  // runs once all threads finished a block, before any starts the next
    std::function<void()> f;
    void operator()() noexcept { f(); }
  };
  std::barrier<Between> block_done(n, Between{[&] {
    ++next;
    if (next < nblocks) fresh_block();
  }});
  fresh_block();

  // A barrier mismatch the Group logic cannot resolve (e.g. threads of one warp waiting
  // in different barriers) would hang the test run: give up loudly instead.
  std::mutex wd_mutex;
  std::condition_variable wd_cv;
  bool finished = false;
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lock(wd_mutex);
    if (!wd_cv.wait_for(lock, std::chrono::seconds(deadlock_seconds()), [&] { return finished; })) {
      std::fprintf(stderr, "emu::launch: kernel still running after %llu s, presumably "
                   "deadlocked on mismatched barriers; aborting\n", deadlock_seconds());
      std::fflush(stderr);
      std::_Exit(70);
    }
  });

  std::vector<std::thread> threads;
  threads.reserve(n);
  for (int t = 0; t < n; ++t) {
    threads.emplace_back([&, t] {
      t_block = &blk;
      t_tid = t;
      threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
      blockDim = block;
      gridDim = grid;
      while (next < nblocks) {  // `next` only changes while every thread is in block_done
        const unsigned long long b = nblocks - 1 - next;
        blockIdx = dim3((unsigned)(b % grid.x), (unsigned)((b / grid.x) % grid.y),
                        (unsigned)(b / ((unsigned long long)grid.x * grid.y)));
        t_shfl_parity = 0;
        body();
        blk.sync->leave();
        blk.warps[t / 32]->group.leave();
        block_done.arrive_and_wait();
      }
    });
  }
  for (auto& th : threads) th.join();
  {
    std::lock_guard<std::mutex> lock(wd_mutex);
    finished = true;
  }
  wd_cv.notify_one();
  watchdog.join();
  return g_faults.load() != faults_before ? kFault : kOk;
}

}  // namespace emu

inline void __syncthreads() { emu::t_block->sync->wait(); }

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffle of a <= 8-byte value");
  if (mask != 0xffffffffu || width != 32) emu::fault("only full-warp xor shuffles are emulated");
  emu::Warp& w = *emu::t_block->warps[emu::t_tid / 32];
  const int lane = emu::t_tid % 32, src = lane ^ (lane_mask & 31), s = emu::t_shfl_parity;
  emu::t_shfl_parity ^= 1;
  std::memcpy(w.slot[s][lane], &var, sizeof(T));
  w.group.wait();
  if (src >= w.lanes) {
    emu::fault("__shfl_xor_sync: source lane outside a partial warp");
    return var;
  }
  T out;
  std::memcpy(&out, w.slot[s][src], sizeof(T));
  return out;
}

#pragma GCC visibility pop

// The exports every emulation library shares (each library is one translation unit, so
// these definitions appear once per library).
extern "C" const char* emu_last_error() {
  std::lock_guard<std::mutex> lock(emu::g_fault_mutex);
  return emu::g_fault.c_str();
}
extern "C" void emu_reset() {
  std::lock_guard<std::mutex> lock(emu::g_fault_mutex);
  emu::g_fault.clear();
  emu::g_faults.store(0);
  std::lock_guard<std::mutex> lock2(emu::g_log_mutex);
  emu::g_log.clear();
}
extern "C" int emu_log_size() {
  std::lock_guard<std::mutex> lock(emu::g_log_mutex);
  return (int)emu::g_log.size();
}
// out: [6] = grid x, y, z, block x, y, z of launch i.
extern "C" void emu_log_entry(int i, unsigned* out) {
  std::lock_guard<std::mutex> lock(emu::g_log_mutex);
  const auto& r = emu::g_log.at((size_t)i);
  for (int k = 0; k < 3; ++k) out[k] = r.grid[k], out[3 + k] = r.block[k];
}

// A host stand-in for the CUDA device code of kernels/*.cu, so that their
// real source runs on a machine without a GPU: compiled as C++ with
// -DSDW_CUSIM (kernels/launch.cuh then includes this header), a launch runs
// its blocks one after another. Every CUDA thread has its own registers and
// its own path through the code, so indexing, barriers, shuffles and block
// reductions are exercised as written.
//
// By default a block's threads are fibers (ucontext) on the launching host
// thread: each runs until it reaches a barrier or a shuffle, and the
// barrier releases once the whole block or warp is there. Thread creation
// and futex wake-ups made the literal version slow. A write and a read with
// no barrier between them only go wrong when the reader runs first, so the
// order in which fibers resume flips at every barrier generation and from
// one block to the next: each pair of threads meets in both orders.
// Fibers on one OS thread hide data races from ThreadSanitizer, so
// SDW_CUSIM_THREADS=1 in the environment (and any -fsanitize=thread build)
// runs one std::thread per CUDA thread instead, with futex barriers, which
// TSan sees as the GPU orders them.
// Under ASan (--enable-sanitizers) the fibers stay: ASan warns once that it
// does not fully support swapcontext, but its interceptor clears the shadow
// of the stack it switches to, so the poison a finished fiber left behind
// on a reused stack raises no false report. The price is that redzones on
// fiber stacks do not outlive a switch (heap checks are whole) and each
// switch clears 256 KiB of shadow: the simulated tests run about seven
// times slower than without ASan, threads slower still.
//
// What it does not model: timing and occupancy, the memory model beyond the
// barriers (a store is visible to whoever synchronises with it, no sooner
// and no later than x86 makes it), bank conflicts, warp divergence costs,
// and the tensor cores' own summation order and rounding (see ptx_mma.h).
// Blocks never run
// concurrently, so function-static variables serve as __shared__ memory.
#ifndef SDW_CUSIM_H
#define SDW_CUSIM_H

#ifndef __cplusplus
#error "cusim.h is C++"
#endif

// Defined before the toolkit's headers, whose host_defines.h keeps a
// qualifier that is already defined rather than turning it into an
// attribute g++ would warn about.
#define __host__
#define __device__
#define __global__
#define __shared__ static

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <vector_types.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <math.h>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>
#include <sys/mman.h>
#include <ucontext.h>
#ifdef __linux__
#include <climits>
#include <ctime>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __forceinline__
#define __forceinline__ inline

// Barriers go through macros so that each arrival carries its source line:
// threads of one block that meet different __syncthreads() calls are a bug
// on the GPU (undefined behaviour), here a clear abort.
#define __syncthreads() sdw_cusim::syncthreads(__FILE__, __LINE__)

inline thread_local uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
constexpr int warpSize = 32;

namespace sdw_cusim {

constexpr unsigned kMaxThreads = 1024;
constexpr size_t kMaxDynamicShared = 227 * 1024; // sm_90's opt-in limit
constexpr size_t kDefaultDynamicShared = 48 * 1024;
constexpr int kDeadlockSeconds = 120;

[[noreturn]] inline void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
inline void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("cusim: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

#if defined(__SANITIZE_THREAD__)
#define SDW_CUSIM_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SDW_CUSIM_TSAN 1
#endif
#endif

// Whether CUDA threads are std::threads rather than fibers (see the top).
inline bool use_threads()
{
#ifdef SDW_CUSIM_TSAN
    return true;
#else
    static const bool threads = [] {
        const char *e = getenv("SDW_CUSIM_THREADS");
        return e && !strcmp(e, "1");
    }();
    return threads;
#endif
}

// Where a thread waits: a barrier's call site.
struct Site {
    const char *file = nullptr;
    int line = 0;
};

inline bool same_site(const Site &a, const Site &b)
{
    return a.line == b.line && !strcmp(a.file, b.file);
}

[[noreturn]] inline void die_sites(unsigned a, const Site &sa, unsigned b, const Site &sb)
{
    die("threads of one block or warp wait at different barriers: thread %u at %s:%d, thread %u at "
        "%s:%d (a barrier in divergent code, or a thread that left the kernel early)",
        a, sa.file, sa.line, b, sb.file, sb.line);
}

// A reusable barrier for n threads. The threads far outnumber the cores, so
// waiters sleep on a futex instead of spinning. Ordering comes from the
// acquire/release atomics alone, which is also what ThreadSanitizer follows:
// it adds no edge between generations that the GPU would not have.
class Barrier {
public:
    void reset(unsigned n)
    {
        n_ = n;
        arrived_.store(0, std::memory_order_relaxed);
        sites_.assign(n, Site());
    }

    // slot is the caller's index among the n; file and line its call site.
    void wait(unsigned slot, const char *file, int line)
    {
        sites_[slot] = Site{file, line};
        unsigned gen = gen_.load(std::memory_order_acquire);
        if (arrived_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
            check_sites();
            arrived_.store(0, std::memory_order_relaxed);
            gen_.fetch_add(1, std::memory_order_acq_rel);
            wake();
            return;
        }
        sleep_while(gen);
    }

private:
    void check_sites() const
    {
        for (unsigned i = 1; i < n_; i++)
            if (!same_site(sites_[i], sites_[0]))
                die_sites(0, sites_[0], i, sites_[i]);
    }

    void sleep_while(unsigned gen)
    {
        time_t start = time(nullptr);
        for (int spin = 0; gen_.load(std::memory_order_acquire) == gen; spin++) {
            if (spin < 64)
                continue;
#ifdef __linux__
            struct timespec ts = {1, 0};
            syscall(SYS_futex, reinterpret_cast<unsigned *>(&gen_), FUTEX_WAIT_PRIVATE, gen, &ts, nullptr, 0);
#else
            std::this_thread::yield();
#endif
            if (time(nullptr) - start > kDeadlockSeconds)
                die("a barrier has waited %d s: deadlock (%u of %u threads arrived)", kDeadlockSeconds,
                    arrived_.load(), n_);
        }
    }

    void wake()
    {
#ifdef __linux__
        syscall(SYS_futex, reinterpret_cast<unsigned *>(&gen_), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
#endif
    }

    static_assert(sizeof(std::atomic<unsigned>) == sizeof(unsigned), "a futex word");
    std::atomic<unsigned> gen_{0}, arrived_{0};
    unsigned n_ = 0;
    std::vector<Site> sites_;
};

// A warp: its barrier (__syncwarp, and the step inside every shuffle) and
// the words through which lanes exchange shuffled values. Two sets of words
// used in turn let a shuffle take a single barrier: a lane can only write
// one set again after every lane has passed the barrier of the shuffle
// after, and so has read it.
struct Warp {
    Barrier bar;
    unsigned lanes = 0;
    unsigned arrived = 0; // with fibers: lanes at the warp's barrier
    bool down = false;    // with fibers: the order its lanes last ran in
    alignas(64) unsigned char words[2][32][8];
    // The same for exchange(): up to 32 bytes from every lane at once.
    alignas(64) unsigned char block[2][32][32];
};

// The state of one launch; blocks of it run one at a time.
struct Grid {
    Barrier block_bar;
    std::vector<Warp> warps;
    unsigned char *shared = nullptr; // dynamic shared memory of the running block
    size_t shared_bytes = 0;
    bool fibers = false; // or one std::thread per CUDA thread
};

inline Grid *g_grid;
// Buffer of the dynamic shared memory, refilled with 0xff (NaN in float,
// half and bfloat16) before every block, so that a read of something no
// thread wrote shows up.
alignas(128) inline unsigned char g_shared[kMaxDynamicShared];
// Opt-ins made with cudaFuncSetAttribute, by kernel.
inline std::map<const void *, size_t> g_max_shared;
inline thread_local cudaError_t g_last_error = cudaSuccess;

struct Self {
    unsigned linear = 0, lane = 0, parity = 0;
    Warp *warp = nullptr;
};
inline thread_local Self self;

// One CUDA thread as a fiber. What a CUDA thread keeps in thread_local
// variables (self, threadIdx) lives here while the fiber is switched out:
// all fibers share the launching host thread's copies.
struct Fiber {
    enum State : unsigned char { runnable, at_block, at_warp, done };
    ucontext_t ctx;
    Self self;
    uint3 tid;
    State state = runnable;
    Site site;
};

// A stack per possible thread of a block, mapped once (without reserving
// swap) and kept across blocks and launches: pages no fiber touched cost
// nothing, and those it did are reused. Kernels keep arrays in registers
// (attention_tc's operands and accumulators, and ptx_mma.h's whole tiles
// and 1 KiB exchange), so the stacks are
// generous; a guard page below each turns an overflow into a fault instead
// of a silent write into the neighbour's stack.
constexpr size_t kFiberStack = 256 * 1024;
constexpr size_t kFiberGuard = 4096;

struct Fibers {
    Fiber *fib = nullptr; // kMaxThreads of them
    unsigned char *stacks = nullptr;
    ucontext_t sched; // the launching thread, between fibers
    Fiber *cur = nullptr;
    unsigned n = 0, pos = 0; // the block's threads; the next place in this pass's order
    bool down = false;       // this pass's order
    // A warp whose barrier released runs on before the pass goes on.
    unsigned warp0 = 0, warp_n = 0, warp_pos = 0;
    bool warp_down = false;
    void (*body)(void *) = nullptr;
    void *ctx = nullptr;
    uint64_t blocks = 0; // blocks run so far, over all launches
};

inline Fibers &fibers()
{
    static Fibers *f = [] {
        Fibers *f = new Fibers();
        f->fib = new Fiber[kMaxThreads];
        const size_t per = kFiberGuard + kFiberStack;
#ifdef MAP_NORESERVE
        const int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
#else
        const int flags = MAP_PRIVATE | MAP_ANONYMOUS;
#endif
        void *m = mmap(nullptr, per * kMaxThreads, PROT_READ | PROT_WRITE, flags, -1, 0);
        if (m == MAP_FAILED)
            die("cannot map %zu MiB of fiber stacks: %s", per * kMaxThreads >> 20, strerror(errno));
        f->stacks = static_cast<unsigned char *>(m);
        for (unsigned t = 0; t < kMaxThreads; t++) {
            if (mprotect(f->stacks + t * per, kFiberGuard, PROT_NONE))
                die("mprotect of a fiber stack guard: %s", strerror(errno));
            if (getcontext(&f->fib[t].ctx))
                die("getcontext: %s", strerror(errno));
        }
        return f;
    }();
    return *f;
}

// Switches from `from` (a fiber that stops, or the scheduler) to the next
// runnable fiber of the pass, or back to the scheduler at its end. A fiber
// hands over to the next one directly, as swapcontext costs a system call.
inline void fiber_next(Fibers &f, ucontext_t *from)
{
    for (;;) {
        unsigned i;
        Fiber *next;
        if (f.warp_pos < f.warp_n) {
            i = f.warp_pos++;
            next = &f.fib[f.warp0 + (f.warp_down ? f.warp_n - 1 - i : i)];
        } else if (f.pos < f.n) {
            i = f.pos++;
            next = &f.fib[f.down ? f.n - 1 - i : i];
        } else {
            break;
        }
        Fiber &fb = *next;
        if (fb.state != Fiber::runnable)
            continue;
        f.cur = &fb;
        self = fb.self;
        threadIdx = fb.tid;
        swapcontext(from, &fb.ctx);
        return;
    }
    if (from != &f.sched)
        swapcontext(from, &f.sched);
}

// Stops this fiber until the barrier at file:line releases.
inline void fiber_stop(Fiber::State at, const char *file, int line)
{
    Fibers &f = fibers();
    Fiber *me = f.cur;
    me->state = at;
    me->site = Site{file, line};
    me->self = self;
    Warp &w = *self.warp;
    if (at == Fiber::at_warp && ++w.arrived == w.lanes) {
        // The last lane in: the warp goes on at once, in the other order,
        // up to its next __syncthreads. Warps thus run ahead of one
        // another, as they may on a GPU, and code that only a warp-level
        // barrier separates from another warp's meets it in both orders.
        w.arrived = 0;
        unsigned w0 = self.linear / 32 * 32;
        for (unsigned u = w0 + 1; u < w0 + w.lanes; u++)
            if (!same_site(f.fib[u].site, f.fib[w0].site))
                die_sites(w0, f.fib[w0].site, u, f.fib[u].site);
        for (unsigned u = w0; u < w0 + w.lanes; u++)
            f.fib[u].state = Fiber::runnable;
        w.down = !w.down;
        f.warp0 = w0;
        f.warp_n = w.lanes;
        f.warp_pos = 0;
        f.warp_down = w.down;
    }
    fiber_next(f, &me->ctx);
}

inline void fiber_entry()
{
    Fibers &f = fibers();
    f.body(f.ctx);
    fiber_stop(Fiber::done, "(end of block)", 0);
    die("a fiber was resumed after its block ended");
}

inline void syncthreads(const char *file, int line)
{
    if (g_grid->fibers)
        fiber_stop(Fiber::at_block, file, line);
    else
        g_grid->block_bar.wait(self.linear, file, line);
}

inline void warp_wait(Warp &w, const char *file, int line)
{
    if (g_grid->fibers)
        fiber_stop(Fiber::at_warp, file, line);
    else
        w.bar.wait(self.lane, file, line);
}

inline void syncwarp(unsigned mask, const char *file, int line)
{
    Warp &w = *self.warp;
    unsigned full = w.lanes == 32 ? 0xffffffffu : (1u << w.lanes) - 1;
    if (mask != full)
        die("%s:%d: __syncwarp(0x%08x) over part of a warp is not simulated", file, line, mask);
    warp_wait(w, file, line);
}

// Lane `lane` receives the v of lane src(lane); a source outside the warp
// gives the lane its own value, as the hardware does for shfl_xor and
// shfl_up/down past the edge.
template <typename T, typename Src>
T shuffle(unsigned mask, T v, int width, Src src, const char *file, int line)
{
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "a 4- or 8-byte value");
    Warp &w = *self.warp;
    unsigned full = w.lanes == 32 ? 0xffffffffu : (1u << w.lanes) - 1;
    if (mask != full || width != 32)
        die("%s:%d: shuffle with mask 0x%08x, width %d: only whole warps are simulated", file, line, mask, width);
    unsigned p = self.parity;
    self.parity ^= 1;
    memcpy(w.words[p][self.lane], &v, sizeof v);
    warp_wait(w, file, line);
    int from = src((int)self.lane);
    if (from >= 0 && from < (int)w.lanes)
        memcpy(&v, w.words[p][from], sizeof v);
    return v;
}

// Every lane of the warp gives `bytes` (at most 32) from mine and receives
// all lanes' in all[lane]: what a warp-wide instruction such as mma.sync
// sees, whose operands are spread over its lanes' registers. One barrier,
// with the words of shuffle() in turn (self.parity).
inline void exchange(const void *mine, size_t bytes, unsigned char (*all)[32], const char *file, int line)
{
    Warp &w = *self.warp;
    if (w.lanes != 32 || bytes > 32)
        die("%s:%d: a warp-wide exchange needs 32 lanes and at most 32 bytes from each", file, line);
    unsigned p = self.parity;
    self.parity ^= 1;
    memcpy(w.block[p][self.lane], mine, bytes);
    warp_wait(w, file, line);
    memcpy(all, w.block[p], sizeof w.block[p]);
}

inline unsigned char *dynamic_shared()
{
    return g_grid->shared;
}

// Whether [p, p + bytes) lies in the running block's dynamic shared memory;
// -1 when it starts outside it (global memory), 0 when it straddles its end.
inline int in_dynamic_shared(const void *p, size_t bytes)
{
    const unsigned char *c = static_cast<const unsigned char *>(p);
    if (!g_grid || c < g_grid->shared || c >= g_grid->shared + g_grid->shared_bytes)
        return -1;
    return c + bytes <= g_grid->shared + g_grid->shared_bytes;
}

// What a launch with this configuration returns before it runs: an error
// the GPU reports to the launch (then nothing runs), or cudaSuccess; a
// configuration no kernel of ours may ever use aborts.
inline cudaError_t launch_error(dim3 grid, dim3 block, size_t shared, const void *kernel)
{
    uint64_t nthreads = (uint64_t)block.x * block.y * block.z;
    if (nthreads > kMaxThreads || block.x > 1024 || block.y > 1024 || block.z > 64)
        die("launch with blockDim %ux%ux%u: more than %u threads or a dimension past the limit", block.x, block.y,
            block.z, kMaxThreads);
    if (shared > kMaxDynamicShared)
        die("launch with %zu bytes of dynamic shared memory, over the %zu an sm_90 block may have", shared,
            kMaxDynamicShared);
    if (nthreads == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 ||
        grid.z > 65535)
        return cudaErrorInvalidConfiguration;
    if (shared > kDefaultDynamicShared) {
        auto it = g_max_shared.find(kernel);
        if (it == g_max_shared.end() || it->second < shared)
            return cudaErrorInvalidValue; // what a GPU says to a launch that did not opt in
    }
    return cudaSuccess;
}

inline void run_threads(Grid &g, dim3 grid, dim3 block, unsigned nthreads, size_t shared, void (*body)(void *),
                        void *ctx)
{
    const uint64_t nblocks = (uint64_t)grid.x * grid.y * grid.z;
    auto thread_main = [&](unsigned t) {
        self.linear = t;
        self.lane = t % 32;
        self.parity = 0;
        self.warp = &g.warps[t / 32];
        threadIdx = uint3{t % block.x, t / block.x % block.y, t / (block.x * block.y)};
        for (uint64_t b = 0; b < nblocks; b++) {
            blockIdx = uint3{(unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y), (unsigned)(b / grid.x / grid.y)};
            body(ctx);
            // Every thread is out of this block before the next one starts
            // (static __shared__ variables carry over, as they may not on
            // a GPU; only the dynamic memory is poisoned again).
            g.block_bar.wait(t, "(end of block)", 0);
            // Without dynamic shared memory there is nothing to refill,
            // and the barrier above already orders the blocks.
            if (shared) {
                if (t == 0)
                    memset(g_shared, 0xff, shared);
                g.block_bar.wait(t, "(start of block)", 0);
            }
        }
    };
    std::vector<std::thread> threads;
    threads.reserve(nthreads);
    for (unsigned t = 0; t < nthreads; t++)
        threads.emplace_back(thread_main, t);
    for (auto &th : threads)
        th.join();
}

[[noreturn]] inline void die_deadlock(const Fibers &f, unsigned n)
{
    for (unsigned t = 0; t < n; t++) {
        const Fiber &a = f.fib[t];
        if (a.state != Fiber::at_warp)
            continue;
        unsigned w0 = t / 32 * 32, w1 = w0 + 32 < n ? w0 + 32 : n;
        for (unsigned u = w0; u < w1; u++) {
            const Fiber &b = f.fib[u];
            if (b.state == Fiber::at_block)
                die("deadlock: thread %u waits for its warp at %s:%d, thread %u at __syncthreads at %s:%d", t,
                    a.site.file, a.site.line, u, b.site.file, b.site.line);
            if (b.state == Fiber::done)
                die("deadlock: thread %u waits for its warp at %s:%d, thread %u of that warp has left the kernel", t,
                    a.site.file, a.site.line, u);
        }
    }
    die("deadlock: no thread of the block can go on");
}

// Releases the block's barrier once no fiber can run (warps release their
// own as their last lane arrives); returns false when the block is over.
inline bool fiber_release(Fibers &f, unsigned n)
{
    // Leaving the kernel counts as arriving at the end of the block, so a
    // __syncthreads that some threads skipped gets the same message as
    // with threads.
    bool all_done = true;
    for (unsigned t = 0; t < n; t++) {
        if (f.fib[t].state == Fiber::at_warp)
            die_deadlock(f, n);
        all_done &= f.fib[t].state == Fiber::done;
    }
    if (all_done)
        return false;
    for (unsigned t = 1; t < n; t++)
        if (!same_site(f.fib[t].site, f.fib[0].site))
            die_sites(0, f.fib[0].site, t, f.fib[t].site);
    for (unsigned t = 0; t < n; t++)
        f.fib[t].state = Fiber::runnable;
    return true;
}

inline void run_fibers(Grid &g, dim3 grid, dim3 block, unsigned n, size_t shared, void (*body)(void *), void *ctx)
{
    Fibers &f = fibers();
    f.body = body;
    f.ctx = ctx;
    const uint64_t nblocks = (uint64_t)grid.x * grid.y * grid.z;
    for (uint64_t b = 0; b < nblocks; b++) {
        blockIdx = uint3{(unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y), (unsigned)(b / grid.x / grid.y)};
        // Static __shared__ variables carry over, as they may not on a GPU;
        // only the dynamic memory is poisoned again.
        if (b && shared)
            memset(g_shared, 0xff, shared);
        for (unsigned t = 0; t < n; t++) {
            Fiber &fb = f.fib[t];
            fb.state = Fiber::runnable;
            fb.self = Self{t, t % 32, 0, &g.warps[t / 32]};
            fb.tid = uint3{t % block.x, t / block.x % block.y, t / (block.x * block.y)};
            fb.ctx.uc_stack.ss_sp = f.stacks + t * (kFiberGuard + kFiberStack) + kFiberGuard;
            fb.ctx.uc_stack.ss_size = kFiberStack;
            fb.ctx.uc_link = nullptr;
            makecontext(&fb.ctx, fiber_entry, 0);
        }
        // Every runnable fiber runs up to its next __syncthreads (through
        // its warp's barriers, see fiber_stop), in one order and then the
        // other: the order flips with each generation (all of one resume
        // in the same pass) and, through the block count, between blocks,
        // so that code between two barriers runs in both orders whatever
        // the parity of its position.
        f.n = n;
        for (uint64_t pass = f.blocks++;; pass++) {
            f.down = pass & 1;
            f.pos = 0;
            f.warp_n = f.warp_pos = 0;
            for (Warp &w : g.warps)
                w.down = f.down;
            fiber_next(f, &f.sched);
            if (!fiber_release(f, n))
                break;
        }
    }
    f.cur = nullptr;
}

inline void run(dim3 grid, dim3 block, size_t shared, const void *kernel, void (*body)(void *), void *ctx)
{
    cudaError_t rc = launch_error(grid, block, shared, kernel);
    if (rc != cudaSuccess) {
        g_last_error = rc;
        return;
    }
    unsigned nthreads = block.x * block.y * block.z;
    if (g_grid)
        die("a launch from inside a kernel, or from two host threads at once");

    Grid g;
    g.block_bar.reset(nthreads);
    g.warps = std::vector<Warp>((nthreads + 31) / 32);
    for (size_t w = 0; w < g.warps.size(); w++) {
        g.warps[w].lanes = (unsigned)(nthreads - 32 * w < 32 ? nthreads - 32 * w : 32);
        g.warps[w].bar.reset(g.warps[w].lanes);
    }
    g.shared = g_shared;
    g.shared_bytes = shared;
    g.fibers = !use_threads();
    memset(g_shared, 0xff, shared);
    g_grid = &g;
    blockDim = block;
    gridDim = grid;
    if (g.fibers)
        run_fibers(g, grid, block, nthreads, shared, body, ctx);
    else
        run_threads(g, grid, block, nthreads, shared, body, ctx);
    g_grid = nullptr;
}

// Set by a host stand-in for the CUDA runtime (tests/cusim/fake_cudart.cc)
// when one is linked: given a launch into `stream`, it keeps the launch for
// later and returns true while that stream is being captured into a graph,
// and returns false (the launch runs now) otherwise.
inline bool (*g_capture)(cudaStream_t stream, std::function<void()> launch);

// The callable that SDW_LAUNCH(grid, block, shared, stream, kernel) stands
// for: called with the kernel's arguments, it runs the whole grid before it
// returns (a stream is as good as synchronous here), unless the stream is
// being captured: then the launch is checked and kept, with its arguments
// by value, as a graph node would keep them.
template <typename... P>
struct Launch {
    void (*kernel)(P...);
    dim3 grid, block;
    size_t shared;
    cudaStream_t stream;

    template <typename... A>
    void operator()(A &&...args) const
    {
        const void *key = reinterpret_cast<const void *>(kernel);
        if (g_capture) {
            cudaError_t rc = launch_error(grid, block, shared, key);
            if (rc != cudaSuccess) {
                g_last_error = rc;
                return;
            }
            std::tuple<std::decay_t<P>...> saved(std::forward<A>(args)...);
            Launch again = *this;
            if (g_capture(stream, [again, saved] { std::apply(again, saved); }))
                return;
        }
        auto call = [&] { kernel(args...); };
        run(grid, block, shared, key, [](void *c) { (*static_cast<decltype(call) *>(c))(); }, &call);
    }
};

template <typename... P>
Launch<P...> launch(dim3 grid, dim3 block, size_t shared, cudaStream_t stream, void (*kernel)(P...))
{
    return Launch<P...>{kernel, grid, block, shared, stream};
}

} // namespace sdw_cusim

#define __syncwarp(...) sdw_cusim::syncwarp(sdw_cusim_mask(__VA_ARGS__), __FILE__, __LINE__)
inline unsigned sdw_cusim_mask(unsigned mask = 0xffffffffu)
{
    return mask;
}

#define __shfl_sync(mask, v, src, ...) \
    sdw_cusim::shuffle((mask), (v), sdw_cusim_width(__VA_ARGS__), [&](int) { return (int)(src); }, __FILE__, __LINE__)
#define __shfl_xor_sync(mask, v, lanemask, ...)                                                                      \
    sdw_cusim::shuffle((mask), (v), sdw_cusim_width(__VA_ARGS__), [&](int l) { return l ^ (int)(lanemask); }, __FILE__, \
                       __LINE__)
#define __shfl_down_sync(mask, v, delta, ...)                                                                        \
    sdw_cusim::shuffle((mask), (v), sdw_cusim_width(__VA_ARGS__), [&](int l) { return l + (int)(delta); }, __FILE__, \
                       __LINE__)
#define __shfl_up_sync(mask, v, delta, ...) \
    sdw_cusim::shuffle((mask), (v), sdw_cusim_width(__VA_ARGS__), [&](int l) { return l - (int)(delta); }, __FILE__, __LINE__)
inline int sdw_cusim_width(int width = 32)
{
    return width;
}

// The runtime calls the kernels make. The toolkit declares the C functions;
// the template is the C++ overload that cuda_runtime.h gives nvcc code.
extern "C" inline cudaError_t cudaGetLastError(void)
{
    cudaError_t e = sdw_cusim::g_last_error;
    sdw_cusim::g_last_error = cudaSuccess;
    return e;
}

extern "C" inline cudaError_t cudaPeekAtLastError(void)
{
    return sdw_cusim::g_last_error;
}

template <typename... P>
cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value)
{
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize)
        return cudaSuccess;
    if (value < 0 || (size_t)value > sdw_cusim::kMaxDynamicShared)
        return cudaErrorInvalidValue;
    sdw_cusim::g_max_shared[reinterpret_cast<const void *>(kernel)] = (size_t)value;
    return cudaSuccess;
}

#endif

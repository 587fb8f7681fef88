// A host stand-in for the part of the CUDA runtime that
// the CUDA backend (src/cuda/) and its tests call (see fake_cuda.h). Device
// memory is host memory from aligned_alloc, registered so that copies,
// cuBLAS and cuDNN can refuse pointers that do not lie inside a live
// allocation. Streams run their work at once, except while being captured:
// then kernel launches (through cusim.h's capture hook), cuBLAS and cuDNN
// calls and device-to-device copies are kept, in order, and a graph
// launched from the capture runs them again. What the documentation
// (cuda_runtime_api.h) forbids during a capture fails and invalidates it.
#include "fake_cuda.h"

#include <cuda_runtime_api.h>

#include <cstdlib>
#include <map>
#include <set>
#include <vector>

struct CUstream_st {
    bool capturing = false, invalid = false;
    cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
    std::vector<std::function<void()>> nodes;
};

struct CUgraph_st {
    std::vector<std::function<void()>> nodes;
};

struct CUgraphExec_st {
    std::vector<std::function<void()>> nodes;
};

namespace {

// What the one simulated device claims to have, 16 GiB or
// SDW_FAKE_DEVICE_MIB (read at every call, so that a test can shrink the
// device to what is in use to see allocations fail); cudaMalloc fails past
// it.
size_t total_bytes()
{
    const char *mib = getenv("SDW_FAKE_DEVICE_MIB");
    return mib && *mib ? (size_t)strtoull(mib, nullptr, 10) << 20 : (size_t)16 << 30;
}
// New allocations up to this size are filled with 0xff (NaN as float, half
// and bfloat16), so that reading memory nobody wrote shows; larger ones,
// workspaces, are left as they come to spare the host the pages.
constexpr size_t kPoisonBytes = (size_t)64 << 20;

std::map<uintptr_t, size_t> g_allocs; // start -> bytes
size_t g_live_bytes;
std::set<cudaStream_t> g_streams;
std::set<cudaGraph_t> g_graphs;
std::set<cudaGraphExec_t> g_execs;

cudaError_t fail(cudaError_t rc)
{
    sdw_cusim::g_last_error = rc;
    return rc;
}

bool special_stream(cudaStream_t s)
{
    return s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread;
}

// A capture in another mode than relaxed forbids "potentially unsafe" calls
// (cudaMalloc, synchronous copies) on the capturing thread; relaxed allows
// them.
bool strict_capture()
{
    for (cudaStream_t s : g_streams)
        if (s->capturing && s->mode != cudaStreamCaptureModeRelaxed)
            return true;
    return false;
}

// A call that would have to wait for a capturing stream conflicts with every
// capture, relaxed or not: it fails and invalidates them.
bool breaks_captures()
{
    bool any = false;
    for (cudaStream_t s : g_streams)
        if (s->capturing) {
            s->invalid = true;
            any = true;
        }
    return any;
}

// Checks a copy's pointers against its direction: device sides must lie in
// live allocations, host sides outside them (with unified addressing a
// wrong direction is what the driver reports as an invalid argument).
cudaError_t check_copy(void *dst, const void *src, size_t count, cudaMemcpyKind kind, bool *host_side)
{
    bool dst_dev, src_dev;
    switch (kind) {
    case cudaMemcpyHostToHost: dst_dev = src_dev = false; break;
    case cudaMemcpyHostToDevice: dst_dev = true, src_dev = false; break;
    case cudaMemcpyDeviceToHost: dst_dev = false, src_dev = true; break;
    case cudaMemcpyDeviceToDevice: dst_dev = src_dev = true; break;
    case cudaMemcpyDefault:
        dst_dev = sdw_fake::device_pointer(dst);
        src_dev = sdw_fake::device_pointer(src);
        break;
    default: return cudaErrorInvalidMemcpyDirection;
    }
    *host_side = !dst_dev || !src_dev;
    if (count == 0)
        return cudaSuccess;
    if (!dst || !src)
        return cudaErrorInvalidValue;
    if (dst_dev ? !sdw_fake::device_range(dst, count) : sdw_fake::device_pointer(dst))
        return cudaErrorInvalidValue;
    if (src_dev ? !sdw_fake::device_range(src, count) : sdw_fake::device_pointer(src))
        return cudaErrorInvalidValue;
    return cudaSuccess;
}

bool capture_launch(cudaStream_t s, std::function<void()> launch)
{
    if (!sdw_fake::capturing(s))
        return false;
    sdw_fake::submit(s, std::move(launch));
    if (s->invalid)
        sdw_cusim::g_last_error = cudaErrorStreamCaptureInvalidated;
    return true;
}

[[maybe_unused]] const bool g_hooked = (sdw_cusim::g_capture = capture_launch, true);

} // namespace

namespace sdw_fake {

bool device_range(const void *p, size_t bytes)
{
    uintptr_t a = (uintptr_t)p;
    auto it = g_allocs.upper_bound(a);
    if (it == g_allocs.begin())
        return false;
    --it;
    return a - it->first <= it->second && bytes <= it->second - (a - it->first);
}

bool device_pointer(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    auto it = g_allocs.upper_bound(a);
    return it != g_allocs.begin() && a - std::prev(it)->first < std::prev(it)->second;
}

bool valid_stream(cudaStream_t s)
{
    return special_stream(s) || g_streams.count(s);
}

bool capturing(cudaStream_t s)
{
    return !special_stream(s) && g_streams.count(s) && s->capturing;
}

void invalidate(cudaStream_t s)
{
    if (capturing(s))
        s->invalid = true;
}

void submit(cudaStream_t s, std::function<void()> work)
{
    if (!capturing(s))
        work();
    else if (!s->invalid)
        s->nodes.push_back(std::move(work));
}

} // namespace sdw_fake

// cusim.h defines cudaGetLastError inline; this makes the compiler emit it
// for the C code that calls it.
extern "C" cudaError_t (*const sdw_fake_get_last_error)(void) = cudaGetLastError;

extern "C" {

const char *cudaGetErrorName(cudaError_t error)
{
    switch (error) {
#define NAME(e) \
    case e: return #e;
        NAME(cudaSuccess)
        NAME(cudaErrorInvalidValue)
        NAME(cudaErrorMemoryAllocation)
        NAME(cudaErrorInvalidConfiguration)
        NAME(cudaErrorInvalidMemcpyDirection)
        NAME(cudaErrorNoDevice)
        NAME(cudaErrorInvalidDevice)
        NAME(cudaErrorInvalidResourceHandle)
        NAME(cudaErrorIllegalState)
        NAME(cudaErrorStreamCaptureUnsupported)
        NAME(cudaErrorStreamCaptureInvalidated)
#undef NAME
    default: return "cudaErrorUnknown";
    }
}

const char *cudaGetErrorString(cudaError_t error)
{
    switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorIllegalState: return "the operation cannot be performed in the present state";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    default: return "unrecognized error code";
    }
}

cudaError_t cudaGetDeviceCount(int *count)
{
    if (!count)
        return fail(cudaErrorInvalidValue);
    *count = 1;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device)
{
    if (!prop)
        return fail(cudaErrorInvalidValue);
    if (device != 0)
        return fail(cudaErrorInvalidDevice);
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "simulated");
    prop->major = 9;
    prop->minor = 0;
    prop->totalGlobalMem = total_bytes();
    prop->multiProcessorCount = 132;
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = 1024;
    prop->sharedMemPerBlock = sdw_cusim::kDefaultDynamicShared;
    prop->sharedMemPerBlockOptin = sdw_cusim::kMaxDynamicShared;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device)
{
    return device == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice);
}

cudaError_t cudaDeviceSynchronize(void)
{
    return breaks_captures() ? fail(cudaErrorStreamCaptureUnsupported) : cudaSuccess;
}

cudaError_t cudaMalloc(void **devPtr, size_t size)
{
    if (!devPtr)
        return fail(cudaErrorInvalidValue);
    if (strict_capture()) {
        breaks_captures();
        return fail(cudaErrorStreamCaptureUnsupported);
    }
    *devPtr = nullptr;
    if (size == 0)
        return cudaSuccess;
    size_t bytes = (size + 255) & ~(size_t)255;
    if (bytes < size || g_live_bytes > total_bytes() || bytes > total_bytes() - g_live_bytes)
        return fail(cudaErrorMemoryAllocation);
    void *p = aligned_alloc(256, bytes);
    if (!p)
        return fail(cudaErrorMemoryAllocation);
    if (bytes <= kPoisonBytes)
        memset(p, 0xff, bytes);
    g_allocs[(uintptr_t)p] = size;
    g_live_bytes += bytes;
    *devPtr = p;
    return cudaSuccess;
}

cudaError_t cudaFree(void *devPtr)
{
    if (!devPtr)
        return cudaSuccess;
    // cudaFree may synchronise the device, which no capture can contain.
    if (breaks_captures())
        return fail(cudaErrorStreamCaptureUnsupported);
    auto it = g_allocs.find((uintptr_t)devPtr);
    if (it == g_allocs.end())
        return fail(cudaErrorInvalidValue);
    g_live_bytes -= (it->second + 255) & ~(size_t)255;
    g_allocs.erase(it);
    free(devPtr);
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total)
{
    if (!free_bytes || !total)
        return fail(cudaErrorInvalidValue);
    size_t all = total_bytes();
    *free_bytes = g_live_bytes < all ? all - g_live_bytes : 0;
    *total = all;
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind)
{
    bool host_side;
    cudaError_t rc = check_copy(dst, src, count, kind, &host_side);
    if (rc != cudaSuccess)
        return fail(rc);
    if (strict_capture()) {
        breaks_captures();
        return fail(cudaErrorStreamCaptureUnsupported);
    }
    if (count)
        memmove(dst, src, count);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind, cudaStream_t stream)
{
    if (!sdw_fake::valid_stream(stream))
        return fail(cudaErrorInvalidResourceHandle);
    bool host_side;
    cudaError_t rc = check_copy(dst, src, count, kind, &host_side);
    if (rc != cudaSuccess)
        return fail(rc);
    if (sdw_fake::capturing(stream)) {
        // A graph cannot hold a copy from or to pageable host memory (the
        // only host memory here): the real runtime fails the call and the
        // capture with it.
        if (host_side) {
            sdw_fake::invalidate(stream);
            return fail(cudaErrorStreamCaptureUnsupported);
        }
        if (stream->invalid)
            return fail(cudaErrorStreamCaptureInvalidated);
    }
    if (!count)
        return cudaSuccess;
    if (!sdw_fake::capturing(stream)) {
        memmove(dst, src, count);
        return cudaSuccess;
    }
    sdw_fake::submit(stream, [dst, src, count] {
        if (!sdw_fake::device_range(dst, count) || !sdw_fake::device_range(src, count))
            sdw_cusim::die("a replayed copy of %zu bytes from %p to %p touches freed memory", count, src, dst);
        memmove(dst, src, count);
    });
    return cudaSuccess;
}

cudaError_t cudaMemset(void *devPtr, int value, size_t count)
{
    if (count && !sdw_fake::device_range(devPtr, count))
        return fail(cudaErrorInvalidValue);
    if (strict_capture()) {
        breaks_captures();
        return fail(cudaErrorStreamCaptureUnsupported);
    }
    if (count)
        memset(devPtr, value, count);
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *pStream, unsigned int flags)
{
    if (!pStream || (flags != cudaStreamDefault && flags != cudaStreamNonBlocking))
        return fail(cudaErrorInvalidValue);
    *pStream = new CUstream_st;
    g_streams.insert(*pStream);
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream)
{
    if (special_stream(stream) || !g_streams.erase(stream))
        return fail(cudaErrorInvalidResourceHandle);
    delete stream;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream)
{
    if (!sdw_fake::valid_stream(stream))
        return fail(cudaErrorInvalidResourceHandle);
    // Waiting for work that is only being recorded cannot be done.
    if (sdw_fake::capturing(stream)) {
        sdw_fake::invalidate(stream);
        return fail(cudaErrorStreamCaptureUnsupported);
    }
    return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode mode)
{
    // The legacy stream cannot be captured.
    if (special_stream(stream))
        return fail(cudaErrorStreamCaptureUnsupported);
    if (!g_streams.count(stream))
        return fail(cudaErrorInvalidResourceHandle);
    if (mode != cudaStreamCaptureModeGlobal && mode != cudaStreamCaptureModeThreadLocal &&
        mode != cudaStreamCaptureModeRelaxed)
        return fail(cudaErrorInvalidValue);
    if (stream->capturing)
        return fail(cudaErrorIllegalState);
    stream->capturing = true;
    stream->invalid = false;
    stream->mode = mode;
    stream->nodes.clear();
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *pGraph)
{
    if (!pGraph)
        return fail(cudaErrorInvalidValue);
    if (!sdw_fake::capturing(stream))
        return fail(cudaErrorIllegalState);
    stream->capturing = false;
    // "If capture was invalidated ... a NULL graph will be returned."
    *pGraph = nullptr;
    if (stream->invalid) {
        stream->nodes.clear();
        return fail(cudaErrorStreamCaptureInvalidated);
    }
    cudaGraph_t g = new CUgraph_st;
    g->nodes.swap(stream->nodes);
    g_graphs.insert(g);
    *pGraph = g;
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *pGraphExec, cudaGraph_t graph, unsigned long long flags)
{
    if (!pGraphExec || !g_graphs.count(graph) || flags)
        return fail(cudaErrorInvalidValue);
    // The executable graph is a copy: the graph may be destroyed after.
    cudaGraphExec_t x = new CUgraphExec_st;
    x->nodes = graph->nodes;
    g_execs.insert(x);
    *pGraphExec = x;
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t graphExec, cudaStream_t stream)
{
    if (!g_execs.count(graphExec))
        return fail(cudaErrorInvalidValue);
    if (!sdw_fake::valid_stream(stream))
        return fail(cudaErrorInvalidResourceHandle);
    for (auto &node : graphExec->nodes)
        sdw_fake::submit(stream, node);
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t graphExec)
{
    if (!g_execs.erase(graphExec))
        return fail(cudaErrorInvalidValue);
    delete graphExec;
    return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph)
{
    if (!g_graphs.erase(graph))
        return fail(cudaErrorInvalidValue);
    delete graph;
    return cudaSuccess;
}

} // extern "C"

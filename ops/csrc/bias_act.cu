// bias_act CUDA kernel: bias add, activation, gain and clamp in one pass over
// memory, and the matching first derivative. Includes only the CUDA runtime.
#include <cuda_runtime.h>
#include "bias_act_kernel.cuh"

static const int kThreads = 256;
static const int kPerThread = 4;  // elements in flight per thread

template <typename T, typename I>
__global__ void __launch_bounds__(kThreads) bias_act_kernel(BiasActParams p) {
    const I n = (I)p.numel;
    const I step = (I)gridDim.x * kThreads * kPerThread;
    for (I base = (I)blockIdx.x * kThreads * kPerThread + threadIdx.x; base < n; base += step) {
        // All loads first, then all stores, so the loads overlap in flight.
        float v[kPerThread], g[kPerThread];
#pragma unroll
        for (int k = 0; k < kPerThread; ++k) {
            I i = base + (I)k * kThreads;
            if (i < n) bias_act_load<T, I>(p, i, &v[k], &g[k]);
        }
#pragma unroll
        for (int k = 0; k < kPerThread; ++k) {
            I i = base + (I)k * kThreads;
            if (i < n) bias_act_store<T, I>(p, i, v[k], g[k]);
        }
    }
}

template <typename T>
static void launch(const BiasActParams& p, cudaStream_t s) {
    long long per_block = (long long)kThreads * kPerThread;
    long long blocks = (p.numel + per_block - 1) / per_block;
    if (blocks > (1LL << 30)) blocks = 1LL << 30;  // grid-stride loop covers the rest
    // 32-bit indices (cheaper division) while base + step cannot overflow them.
    if (p.numel < (1LL << 31))
        bias_act_kernel<T, unsigned int><<<(unsigned)blocks, kThreads, 0, s>>>(p);
    else
        bias_act_kernel<T, unsigned long long><<<(unsigned)blocks, kThreads, 0, s>>>(p);
}

const char* bias_act_cuda(const BiasActParams& p) {
    if (p.numel == 0) return nullptr;
    int prev = 0;
    cudaError_t e = cudaGetDevice(&prev);
    if (e == cudaSuccess && prev != p.device) e = cudaSetDevice(p.device);
    if (e != cudaSuccess) return cudaGetErrorString(e);
    cudaStream_t s = (cudaStream_t)p.stream;
    switch (p.dtype) {
        case TM_F32: launch<float>(p, s); break;
        case TM_F16: launch<__half>(p, s); break;
        case TM_BF16: launch<__nv_bfloat16>(p, s); break;
        default: return "unsupported dtype";
    }
    e = cudaGetLastError();
    if (prev != p.device) cudaSetDevice(prev);
    return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

// upfirdn2d CUDA kernel: zero-insertion upsampling, FIR filtering and downsampling
// in one pass, polyphase (zeros are never multiplied). Includes only the CUDA
// runtime; the torch binding lives in upfirdn2d.cpp.
#include <cuda_runtime.h>
#include "upfirdn2d_kernel.cuh"

template <typename T>
__global__ void __launch_bounds__(kUpFirDn2dThreads)
upfirdn2d_kernel(UpFirDn2dParams p, UpFirDn2dTile t) {
    extern __shared__ float smem[];
    float* tile = smem;
    float* filt = smem + t.in_tile_w * t.in_tile_h;
    const int nf = p.f_w * p.f_h;
    for (int i = threadIdx.x; i < nf; i += blockDim.x) filt[i] = p.f[i];

    const UpFirDn2dOrigin o = upfirdn2d_origin(p, t, blockIdx.x);
    const long long planes = (long long)p.n * p.c;
    const int n_in = t.in_tile_w * t.in_tile_h, n_out = t.tile_w * t.tile_h;
    for (long long plane = blockIdx.y; plane < planes; plane += gridDim.y) {
        for (int i = threadIdx.x; i < n_in; i += blockDim.x) upfirdn2d_load<T>(p, t, o, plane, i, tile);
        __syncthreads();
        for (int i = threadIdx.x; i < n_out; i += blockDim.x) upfirdn2d_compute<T>(p, t, o, plane, i, tile, filt);
        __syncthreads();  // the next plane overwrites the tile
    }
}

const char* upfirdn2d_cuda(const UpFirDn2dParams& p) {
    if (p.n == 0 || p.c == 0 || p.out_h == 0 || p.out_w == 0) return nullptr;
    UpFirDn2dTile t;
    if (const char* err = upfirdn2d_plan(p, &t)) return err;
    int prev = 0;
    cudaError_t e = cudaGetDevice(&prev);
    if (e == cudaSuccess && prev != p.device) e = cudaSetDevice(p.device);
    if (e != cudaSuccess) return cudaGetErrorString(e);

    long long planes = (long long)p.n * p.c;
    dim3 grid((unsigned)t.tiles_x * (unsigned)t.tiles_y, (unsigned)(planes < 65535 ? planes : 65535));
    cudaStream_t s = (cudaStream_t)p.stream;
    switch (p.dtype) {
        case TM_F32: upfirdn2d_kernel<float><<<grid, kUpFirDn2dThreads, t.smem_bytes, s>>>(p, t); break;
        case TM_F16: upfirdn2d_kernel<__half><<<grid, kUpFirDn2dThreads, t.smem_bytes, s>>>(p, t); break;
        case TM_BF16: upfirdn2d_kernel<__nv_bfloat16><<<grid, kUpFirDn2dThreads, t.smem_bytes, s>>>(p, t); break;
        default: return "unsupported dtype";
    }
    e = cudaGetLastError();
    if (prev != p.device) cudaSetDevice(prev);
    return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

// Helpers for code that runs both on the GPU and, for the kernel-logic tests,
// on the host (compiled by a plain C++ compiler without CUDA).
#pragma once
#include "common.h"
#include <math.h>

#ifdef __CUDACC__
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#define TM_HD __host__ __device__ __forceinline__
#else
#define TM_HD inline
#endif

TM_HD float tm_to_float(float v) { return v; }
TM_HD void tm_store(float* p, float v) { *p = v; }
#ifdef __CUDACC__
TM_HD float tm_to_float(__half v) { return __half2float(v); }
TM_HD void tm_store(__half* p, float v) { *p = __float2half_rn(v); }
TM_HD float tm_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
TM_HD void tm_store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
#endif

// Integer division rounding towards minus infinity (b > 0); C++ '/' truncates.
TM_HD int tm_floor_div(int a, int b) {
    int q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}
TM_HD int tm_ceil_div(int a, int b) { return -tm_floor_div(-a, b); }
TM_HD int tm_pos_mod(int a, int b) {
    int r = a % b;
    return r < 0 ? r + b : r;
}

// bias_act launch parameters (plain C++; see common.h).
#pragma once
#include "common.h"

enum TmAct { TM_ACT_LINEAR = 0, TM_ACT_RELU = 1, TM_ACT_LRELU = 2 };

struct BiasActParams {
    const void* x;          // input, dense (contiguous in some dimension order)
    const void* b;          // bias [bias_size] or nullptr
    const void* dy;         // incoming gradient, same layout as x (grad == 1 only)
    void* y;                // output, same layout as x
    int dtype;              // TmDtype of x, b, dy and y
    long long numel;
    long long bias_stride;  // stride of the bias dimension in x, in elements
    long long bias_size;    // length of the bias dimension
    int act;                // TmAct
    float alpha, gain, clamp;  // clamp < 0: no clamping
    int grad;               // 0: y = act(x + b); 1: y = dy * d act(x + b) / dx
    int device;             // CUDA device ordinal of all pointers
    void* stream;           // cudaStream_t to launch on
};

// Launches the kernel; returns nullptr or an error message (static storage).
const char* bias_act_cuda(const BiasActParams& p);

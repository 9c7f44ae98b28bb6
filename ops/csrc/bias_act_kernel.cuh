// Per-element pieces of the bias_act kernel, shared by the CUDA kernel and the
// host-side emulator the tests use.
#pragma once
#include "common.cuh"
#include "bias_act.h"

// Activation and its derivative at v. Derivatives at 0 follow PyTorch (relu: 0,
// leaky relu: alpha) so the fused op and the reference agree everywhere. NaN
// passes through as in torch.relu (a plain v > 0 test would turn it into 0 and
// hide a diverging fp16 layer).
TM_HD float bias_act_f(float v, int act, float alpha) {
    if (act == TM_ACT_RELU) return (v > 0.f || v != v) ? v : 0.f;
    if (act == TM_ACT_LRELU) return v > 0.f ? v : v * alpha;
    return v;
}
TM_HD float bias_act_df(float v, int act, float alpha) {
    if (act == TM_ACT_RELU) return v <= 0.f ? 0.f : 1.f;  // NaN passes gradient, as torch's relu
    if (act == TM_ACT_LRELU) return v > 0.f ? 1.f : alpha;
    return 1.f;
}

// Reads x[i] + bias and, for the gradient, dy[i].
template <typename T, typename I>
TM_HD void bias_act_load(const BiasActParams& p, I i, float* v, float* g) {
    *v = tm_to_float(((const T*)p.x)[i]);
    if (p.b) *v += tm_to_float(((const T*)p.b)[(i / (I)p.bias_stride) % (I)p.bias_size]);
    *g = p.grad ? tm_to_float(((const T*)p.dy)[i]) : 0.f;
}

// Writes y[i] from the loaded values. Clamping passes gradient where the clamp
// is inactive, bounds included (as torch.clamp does). The clamp is written with
// comparisons, not fminf/fmaxf, because those return the bound for a NaN and
// torch.clamp returns the NaN; the gradient at a NaN is 0, as in torch.
template <typename T, typename I>
TM_HD void bias_act_store(const BiasActParams& p, I i, float v, float g) {
    float a = bias_act_f(v, p.act, p.alpha) * p.gain;
    float out;
    if (!p.grad) {
        out = (p.clamp >= 0.f && a < -p.clamp) ? -p.clamp : (p.clamp >= 0.f && a > p.clamp) ? p.clamp : a;
    } else {
        bool pass = p.clamp < 0.f || (a >= -p.clamp && a <= p.clamp);
        out = pass ? g * p.gain * bias_act_df(v, p.act, p.alpha) : 0.f;
    }
    tm_store(&((T*)p.y)[i], out);
}

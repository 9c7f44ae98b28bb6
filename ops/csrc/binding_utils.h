// Helpers for the torch bindings (host compiler, torch headers only).
#pragma once
#include <torch/extension.h>
#include "common.h"

inline int tm_dtype_code(const at::Tensor& t, const char* op) {
    switch (t.scalar_type()) {
        case at::kFloat: return TM_F32;
        case at::kHalf: return TM_F16;
        case at::kBFloat16: return TM_BF16;
        default: TORCH_CHECK(false, op, ": unsupported dtype ", t.scalar_type());
    }
    return -1;
}

// Plain C++ definitions shared by the torch bindings (.cpp, built by the host
// compiler against torch headers) and the kernels (.cu, built by nvcc). Nothing
// here includes CUDA or torch headers, so each side compiles without the other.
#pragma once

// Element types the kernels are instantiated for.
enum TmDtype { TM_F32 = 0, TM_F16 = 1, TM_BF16 = 2 };

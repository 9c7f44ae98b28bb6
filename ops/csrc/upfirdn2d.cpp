// Torch binding of the upfirdn2d kernel. The caller (ops/upfirdn2d.py) passes the
// CUDA stream as an integer, so this file needs no CUDA headers.
#include "binding_utils.h"
#include "upfirdn2d.h"

static at::Tensor upfirdn2d(at::Tensor x, at::Tensor f, int64_t up_x, int64_t up_y,
                            int64_t down_x, int64_t down_y, int64_t pad_x0, int64_t pad_x1,
                            int64_t pad_y0, int64_t pad_y1, int64_t stream) {
    TORCH_CHECK(x.is_cuda() && x.dim() == 4, "upfirdn2d: x must be a 4-D CUDA tensor");
    TORCH_CHECK(f.is_cuda() && f.device() == x.device(), "upfirdn2d: f must be on x's device");
    TORCH_CHECK(f.dim() == 2 && f.scalar_type() == at::kFloat && f.is_contiguous(),
                "upfirdn2d: f must be a contiguous 2-D float32 tensor");
    TORCH_CHECK(up_x >= 1 && up_y >= 1 && down_x >= 1 && down_y >= 1, "upfirdn2d: factors must be >= 1");
    int64_t fh = f.size(0), fw = f.size(1);
    int64_t num_h = x.size(2) * up_y + pad_y0 + pad_y1 - fh;
    int64_t num_w = x.size(3) * up_x + pad_x0 + pad_x1 - fw;
    TORCH_CHECK(num_h >= 0 && num_w >= 0, "upfirdn2d: padded input smaller than the filter");
    TORCH_CHECK(x.numel() < (1LL << 62) && x.size(2) * up_y < (1LL << 30) && x.size(3) * up_x < (1LL << 30),
                "upfirdn2d: input too large");
    at::Tensor y = at::empty({x.size(0), x.size(1), num_h / down_y + 1, num_w / down_x + 1},
                             x.options().memory_format(x.suggest_memory_format()));

    UpFirDn2dParams p;
    p.x = x.data_ptr(); p.f = f.data_ptr<float>(); p.y = y.data_ptr();
    p.dtype = tm_dtype_code(x, "upfirdn2d");
    p.n = (int)x.size(0); p.c = (int)x.size(1); p.in_h = (int)x.size(2); p.in_w = (int)x.size(3);
    p.out_h = (int)y.size(2); p.out_w = (int)y.size(3);
    p.sx_n = x.stride(0); p.sx_c = x.stride(1); p.sx_h = x.stride(2); p.sx_w = x.stride(3);
    p.sy_n = y.stride(0); p.sy_c = y.stride(1); p.sy_h = y.stride(2); p.sy_w = y.stride(3);
    p.up_x = (int)up_x; p.up_y = (int)up_y; p.down_x = (int)down_x; p.down_y = (int)down_y;
    p.pad_x0 = (int)pad_x0; p.pad_y0 = (int)pad_y0;
    p.f_h = (int)fh; p.f_w = (int)fw;
    p.device = x.get_device();
    p.stream = reinterpret_cast<void*>(stream);
    const char* err = upfirdn2d_cuda(p);
    TORCH_CHECK(err == nullptr, "upfirdn2d CUDA kernel: ", err);
    return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("upfirdn2d", &upfirdn2d, "upfirdn2d (CUDA)");
}

// Torch binding of the bias_act kernel. The caller (ops/bias_act.py) passes the
// CUDA stream as an integer, so this file needs no CUDA headers.
#include "binding_utils.h"
#include "bias_act.h"

static bool dense(const at::Tensor& t) {
    return t.is_contiguous() || (t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast));
}

static at::Tensor bias_act(at::Tensor x, at::Tensor b, at::Tensor dy, int64_t grad, int64_t dim,
                           int64_t act, double alpha, double gain, double clamp, int64_t stream) {
    TORCH_CHECK(x.is_cuda(), "bias_act: x must be a CUDA tensor");
    TORCH_CHECK(dense(x), "bias_act: x must be contiguous or channels_last");
    TORCH_CHECK(act >= TM_ACT_LINEAR && act <= TM_ACT_LRELU, "bias_act: unknown activation");
    bool has_b = b.numel() > 0;
    if (has_b) {
        TORCH_CHECK(dim >= 0 && dim < x.dim(), "bias_act: dim out of range");
        TORCH_CHECK(b.dim() == 1 && b.size(0) == x.size(dim) && b.is_contiguous(),
                    "bias_act: b must be a contiguous vector of length x.shape[dim]");
        TORCH_CHECK(b.scalar_type() == x.scalar_type() && b.device() == x.device(),
                    "bias_act: b must match x's dtype and device");
    }
    if (grad) {
        TORCH_CHECK(dy.sizes() == x.sizes() && dy.strides() == x.strides(),
                    "bias_act: dy must have x's shape and strides");
        TORCH_CHECK(dy.scalar_type() == x.scalar_type() && dy.device() == x.device(),
                    "bias_act: dy must match x's dtype and device");
    }
    at::Tensor y = at::empty_like(x);
    TORCH_CHECK(y.strides() == x.strides(), "bias_act: output layout differs from input");

    BiasActParams p;
    p.x = x.data_ptr(); p.b = has_b ? b.data_ptr() : nullptr;
    p.dy = grad ? dy.data_ptr() : nullptr; p.y = y.data_ptr();
    p.dtype = tm_dtype_code(x, "bias_act");
    p.numel = x.numel();
    p.bias_stride = has_b ? x.stride(dim) : 1;
    p.bias_size = has_b ? x.size(dim) : 1;
    p.act = (int)act; p.alpha = (float)alpha; p.gain = (float)gain; p.clamp = (float)clamp;
    p.grad = (int)grad;
    p.device = x.get_device();
    p.stream = reinterpret_cast<void*>(stream);
    const char* err = bias_act_cuda(p);
    TORCH_CHECK(err == nullptr, "bias_act CUDA kernel: ", err);
    return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act", &bias_act, "bias + activation (CUDA)");
}

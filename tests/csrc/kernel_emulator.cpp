// Runs the CUDA kernels' per-element code on the host, block after block, so the
// tests can check tiling, polyphase and indexing arithmetic without a GPU. Built
// by tests/kernel_emulator.py with the plain host compiler (no CUDA, no torch).
#include <cstdio>
#include <vector>

static int g_tile_w = 0, g_tile_h = 0, g_bad_reads = 0;
#define TM_TILE_CHECK(r, c) \
    do { if ((r) < 0 || (r) >= g_tile_h || (c) < 0 || (c) >= g_tile_w) ++g_bad_reads; } while (0)

#include "upfirdn2d_kernel.cuh"
#include "bias_act_kernel.cuh"

extern "C" {

// ip: n, c, in_h, in_w, out_h, out_w, sx_n, sx_c, sx_h, sx_w, sy_n, sy_c, sy_h, sy_w,
//     up_x, up_y, down_x, down_y, pad_x0, pad_y0, f_h, f_w.
// plan_out: tile_w, tile_h, in_tile_w, in_tile_h, tiles_x, tiles_y, smem_bytes, bad_reads.
const char* emu_upfirdn2d(const float* x, const float* f, float* y, const long long* ip,
                          long long* plan_out) {
    UpFirDn2dParams p;
    p.x = x; p.f = f; p.y = y; p.dtype = TM_F32;
    p.n = (int)ip[0]; p.c = (int)ip[1]; p.in_h = (int)ip[2]; p.in_w = (int)ip[3];
    p.out_h = (int)ip[4]; p.out_w = (int)ip[5];
    p.sx_n = ip[6]; p.sx_c = ip[7]; p.sx_h = ip[8]; p.sx_w = ip[9];
    p.sy_n = ip[10]; p.sy_c = ip[11]; p.sy_h = ip[12]; p.sy_w = ip[13];
    p.up_x = (int)ip[14]; p.up_y = (int)ip[15]; p.down_x = (int)ip[16]; p.down_y = (int)ip[17];
    p.pad_x0 = (int)ip[18]; p.pad_y0 = (int)ip[19]; p.f_h = (int)ip[20]; p.f_w = (int)ip[21];
    p.device = 0; p.stream = nullptr;
    UpFirDn2dTile t;
    if (const char* err = upfirdn2d_plan(p, &t)) return err;
    g_tile_w = t.in_tile_w; g_tile_h = t.in_tile_h; g_bad_reads = 0;
    std::vector<float> smem(t.smem_bytes / sizeof(float));
    float* tile = smem.data();
    float* filt = tile + t.in_tile_w * t.in_tile_h;
    for (int i = 0; i < p.f_w * p.f_h; ++i) filt[i] = p.f[i];
    const long long planes = (long long)p.n * p.c;
    for (int block = 0; block < t.tiles_x * t.tiles_y; ++block) {
        UpFirDn2dOrigin o = upfirdn2d_origin(p, t, block);
        for (long long plane = 0; plane < planes; ++plane) {
            for (int i = 0; i < t.in_tile_w * t.in_tile_h; ++i) upfirdn2d_load<float>(p, t, o, plane, i, tile);
            for (int i = 0; i < t.tile_w * t.tile_h; ++i) upfirdn2d_compute<float>(p, t, o, plane, i, tile, filt);
        }
    }
    long long plan[8] = {t.tile_w, t.tile_h, t.in_tile_w, t.in_tile_h, t.tiles_x, t.tiles_y,
                         t.smem_bytes, g_bad_reads};
    for (int i = 0; i < 8; ++i) plan_out[i] = plan[i];
    return nullptr;
}

// One call of the bias_act kernel over all elements; wide != 0 uses 64-bit indices.
void emu_bias_act(const float* x, const float* b, const float* dy, float* y, long long numel,
                  long long bias_stride, long long bias_size, int act, float alpha, float gain,
                  float clamp, int grad, int wide) {
    BiasActParams p;
    p.x = x; p.b = b; p.dy = dy; p.y = y; p.dtype = TM_F32; p.numel = numel;
    p.bias_stride = bias_stride; p.bias_size = bias_size; p.act = act; p.alpha = alpha;
    p.gain = gain; p.clamp = clamp; p.grad = grad; p.device = 0; p.stream = nullptr;
    for (long long i = 0; i < numel; ++i) {
        float v, g;
        if (wide) {
            bias_act_load<float, unsigned long long>(p, (unsigned long long)i, &v, &g);
            bias_act_store<float, unsigned long long>(p, (unsigned long long)i, v, g);
        } else {
            bias_act_load<float, unsigned int>(p, (unsigned int)i, &v, &g);
            bias_act_store<float, unsigned int>(p, (unsigned int)i, v, g);
        }
    }
}

}  // extern "C"

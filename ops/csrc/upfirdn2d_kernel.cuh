// Per-element pieces of the upfirdn2d kernel. The CUDA kernel and the host-side
// emulator used by the tests run exactly this code, so the tiling and polyphase
// index arithmetic is tested on machines without a GPU.
#pragma once
#include "common.cuh"
#include "upfirdn2d.h"

// The host emulator defines this to verify every staged-tile read is in bounds.
#ifndef TM_TILE_CHECK
#define TM_TILE_CHECK(r, c)
#endif

// Where a tile starts: its first output pixel and the first input pixel it reads.
struct UpFirDn2dOrigin {
    int ox0, oy0, ix0, iy0;
};

TM_HD UpFirDn2dOrigin upfirdn2d_origin(const UpFirDn2dParams& p, const UpFirDn2dTile& t, int tile) {
    UpFirDn2dOrigin o;
    o.ox0 = (tile % t.tiles_x) * t.tile_w;
    o.oy0 = (tile / t.tiles_x) * t.tile_h;
    // Output o reads upsampled-and-padded pixels o*down + k (k = filter tap); input
    // pixel i sits at i*up + pad0 there, so the first input touched is ceil(.../up).
    o.ix0 = tm_ceil_div(o.ox0 * p.down_x - p.pad_x0, p.up_x);
    o.iy0 = tm_ceil_div(o.oy0 * p.down_y - p.pad_y0, p.up_y);
    return o;
}

// Stages element `idx` of the input tile of plane `plane` (zero outside the image).
template <typename T>
TM_HD void upfirdn2d_load(const UpFirDn2dParams& p, const UpFirDn2dTile& t,
                          const UpFirDn2dOrigin& o, long long plane, int idx, float* tile) {
    int r = idx / t.in_tile_w;
    int c = idx - r * t.in_tile_w;
    int iy = o.iy0 + r, ix = o.ix0 + c;
    float v = 0.f;
    if (iy >= 0 && iy < p.in_h && ix >= 0 && ix < p.in_w) {
        long long n = plane / p.c, ch = plane - n * p.c;
        const T* x = (const T*)p.x;
        v = tm_to_float(x[n * p.sx_n + ch * p.sx_c + iy * p.sx_h + ix * p.sx_w]);
    }
    tile[idx] = v;
}

// Computes output element `idx` of the tile from the staged input and filter.
template <typename T>
TM_HD void upfirdn2d_compute(const UpFirDn2dParams& p, const UpFirDn2dTile& t,
                             const UpFirDn2dOrigin& o, long long plane, int idx,
                             const float* tile, const float* filt) {
    int ly = idx / t.tile_w;
    int lx = idx - ly * t.tile_w;
    int oy = o.oy0 + ly, ox = o.ox0 + lx;
    if (oy >= p.out_h || ox >= p.out_w) return;
    // Polyphase: only taps landing on a non-inserted (real) input pixel contribute.
    int uy = oy * p.down_y - p.pad_y0;
    int ux = ox * p.down_x - p.pad_x0;
    int ky0 = tm_pos_mod(-uy, p.up_y);
    int kx0 = tm_pos_mod(-ux, p.up_x);
    int r0 = (uy + ky0) / p.up_y - o.iy0;  // exact: uy + ky0 is a multiple of up_y
    int c0 = (ux + kx0) / p.up_x - o.ix0;
    float acc = 0.f;
    for (int ky = ky0, r = r0; ky < p.f_h; ky += p.up_y, ++r) {
        const float* trow = tile + r * t.in_tile_w;
        const float* frow = filt + ky * p.f_w;
        for (int kx = kx0, c = c0; kx < p.f_w; kx += p.up_x, ++c) {
            TM_TILE_CHECK(r, c);
            acc += trow[c] * frow[kx];
        }
    }
    long long n = plane / p.c, ch = plane - n * p.c;
    T* y = (T*)p.y;
    tm_store(&y[n * p.sy_n + ch * p.sy_c + oy * p.sy_h + ox * p.sy_w], acc);
}

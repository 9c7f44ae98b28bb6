// upfirdn2d launch parameters and tile planning (plain C++; see common.h).
#pragma once
#include "common.h"

struct UpFirDn2dParams {
    const void* x;      // input [n, c, in_h, in_w], any strides
    const float* f;     // filter [f_h, f_w], float32, contiguous, already flipped and scaled
    void* y;            // output [n, c, out_h, out_w], any strides
    int dtype;          // TmDtype of x and y
    int n, c, in_h, in_w, out_h, out_w;
    long long sx_n, sx_c, sx_h, sx_w;   // strides of x, in elements
    long long sy_n, sy_c, sy_h, sy_w;   // strides of y, in elements
    int up_x, up_y, down_x, down_y;
    int pad_x0, pad_y0; // leading padding (negative crops); trailing padding only sets out_w/out_h
    int f_h, f_w;
    int device;         // CUDA device ordinal of all pointers
    void* stream;       // cudaStream_t to launch on
};

// One thread block computes a tile_w x tile_h tile of one output plane at a time,
// from an in_tile_w x in_tile_h input tile staged in shared memory with the filter.
struct UpFirDn2dTile {
    int tile_w, tile_h;
    int in_tile_w, in_tile_h;
    int tiles_x, tiles_y;
    int smem_bytes;
};

static const int kUpFirDn2dThreads = 256;
static const int kUpFirDn2dMaxSmem = 48 * 1024;  // default dynamic shared memory limit

// Chooses the tile size: as large as 64x32 outputs, shrunk to the output size and
// until the staged input tile and filter fit in shared memory. Returns an error
// message, or nullptr on success.
inline const char* upfirdn2d_plan(const UpFirDn2dParams& p, UpFirDn2dTile* t) {
    int tw = 64, th = 32;
    while (tw > 1 && tw / 2 >= p.out_w) tw /= 2;
    while (th > 1 && th / 2 >= p.out_h) th /= 2;
    for (;;) {
        // Upper bound on how many input pixels the tile's taps can touch per axis.
        int iw = ((tw - 1) * p.down_x + p.f_w - 1) / p.up_x + 1;
        int ih = ((th - 1) * p.down_y + p.f_h - 1) / p.up_y + 1;
        long long bytes = 4LL * ((long long)iw * ih + (long long)p.f_w * p.f_h);
        if (bytes <= kUpFirDn2dMaxSmem) {
            t->tile_w = tw; t->tile_h = th; t->in_tile_w = iw; t->in_tile_h = ih;
            t->tiles_x = (p.out_w + tw - 1) / tw;
            t->tiles_y = (p.out_h + th - 1) / th;
            t->smem_bytes = (int)bytes;
            return nullptr;
        }
        if (tw == 1 && th == 1) return "filter too large for shared memory";
        if (tw >= th && tw > 1) tw /= 2; else th /= 2;
    }
}

// Launches the kernel; returns nullptr or an error message (static storage).
const char* upfirdn2d_cuda(const UpFirDn2dParams& p);

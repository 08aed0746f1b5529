// gather.cpp - window gather for pyengine_core.hpp.
#include <algorithm>
#include <cstring>
#include <limits>

#include "pyengine_core.hpp"

namespace pyengine {

namespace {

// Clip [lo, lo + len) against [0, extent): returns the first in-range index
// relative to lo and the number of in-range elements (0 when disjoint).
inline void clip_span(int64_t lo, int64_t len, int64_t extent, int64_t* first, int64_t* count) {
  const int64_t a = std::max<int64_t>(lo, 0);
  const int64_t b = std::min<int64_t>(lo + len, extent);
  *first = a - lo;
  *count = b > a ? b - a : 0;
}

}  // namespace

void gather_windows_f32(const float* tile, int64_t nband, int64_t height, int64_t width,
                        const int64_t* cx, const int64_t* cy, int64_t n, int64_t size,
                        const float* offset, const float* scale, float* out) {
  if (size < 1 || size > 4096) {
    throw ArgumentError("cutout size must be in 1..4096, got " + std::to_string(size));
  }
  if (nband < 1 || height < 0 || width < 0 || n < 0) {
    throw ArgumentError("extents must be non-negative and nband >= 1");
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const int64_t half = size / 2;
  const int64_t plane = size * size;
  for (int64_t i = 0; i < n; ++i) {
    // Positions far outside the tile cannot overflow: clamp before arithmetic.
    const int64_t x0 = std::clamp<int64_t>(cx[i], -2 * size - width, 2 * size + width) - half;
    const int64_t y0 = std::clamp<int64_t>(cy[i], -2 * size - height, 2 * size + height) - half;
    int64_t col_first, ncol, row_first, nrow;
    clip_span(x0, size, width, &col_first, &ncol);
    clip_span(y0, size, height, &row_first, &nrow);
    for (int64_t b = 0; b < nband; ++b) {
      float* dst = out + (i * nband + b) * plane;
      const float off = offset[b];
      const float sc = scale[b];
      if (nrow == 0 || ncol == 0) {
        std::fill(dst, dst + plane, nan);
        continue;
      }
      const float* src_band = tile + b * height * width;
      for (int64_t r = 0; r < size; ++r) {
        float* drow = dst + r * size;
        if (r < row_first || r >= row_first + nrow) {
          std::fill(drow, drow + size, nan);
          continue;
        }
        const float* srow = src_band + (y0 + r) * width + (x0 + col_first);
        std::fill(drow, drow + col_first, nan);
        float* d = drow + col_first;
        for (int64_t c = 0; c < ncol; ++c) d[c] = (srow[c] - off) * sc;
        std::fill(drow + col_first + ncol, drow + size, nan);
      }
    }
  }
}

}  // namespace pyengine

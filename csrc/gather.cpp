// gather.cpp - window gather and float16 conversion for pyengine_core.hpp.
#include <algorithm>
#include <cstring>
#include <limits>

#include "pyengine_core.hpp"

// The window copy is compiled for AVX-512, AVX2 and baseline x86-64 and the best the CPU
// has is picked when the module loads (GNU ifunc), so one wheel runs everywhere and uses
// wide vectors where they exist: 1.3x the baseline build on the benchmark machine
// (benchmarks/RESULTS.md).  The kernel templates are inlined into each clone.
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define PYENGINE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PYENGINE_CLONES
#endif
#if defined(__GNUC__) || defined(__clang__)
#define PYENGINE_INLINE __attribute__((always_inline)) inline
#else
#define PYENGINE_INLINE inline
#endif

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

// cond ? a : b as bit operations, which vectorize where a branch would not.
inline uint32_t select(bool cond, uint32_t a, uint32_t b) {
  const uint32_t mask = 0u - static_cast<uint32_t>(cond);
  return (a & mask) | (b & ~mask);
}

// binary32: 1 sign, 8 exponent (bias 127), 23 mantissa bits; binary16: 1, 5 (bias 15), 10.
// Every case is computed and then selected, without branches, so that loops vectorize.
inline uint16_t to_half(float value) {
  uint32_t x;
  std::memcpy(&x, &value, sizeof x);
  const uint32_t a = x & 0x7fffffffu;
  // |value| >= 2^-14, normal: rebias the exponent by 127 - 15 and drop 13 mantissa bits,
  // rounding to nearest even (0xfff plus the kept lowest bit carries exactly when needed;
  // a carry into the exponent is right; from 65520 up, saturated below).
  const uint32_t normal = (a - 0x38000000u + 0xfffu + ((a >> 13) & 1u)) >> 13;
  // |value| < 2^-14, subnormal or zero: in [0.5, 1) a float's ulp is 2^-24, the binary16
  // subnormal step, so the FPU's round-to-nearest-even addition does the rounding.
  float abs_value;
  std::memcpy(&abs_value, &a, sizeof a);
  const float shifted = abs_value + 0.5f;
  uint32_t shifted_bits;
  std::memcpy(&shifted_bits, &shifted, sizeof shifted);
  const uint32_t subnormal = shifted_bits - 0x3f000000u;  // units of 2^-24 above 0.5
  // NaN keeps its top payload bits (never 0, which would read as inf), as NumPy does.
  const uint32_t payload = (a & 0x7fffffu) >> 13;
  const uint32_t nan = 0x7c00u | payload | static_cast<uint32_t>(payload == 0u);
  uint32_t h = select(a < 0x38800000u, subnormal, normal);
  // Finite values from 65520 (halfway past 65504) up saturate to the largest finite half,
  // 65504: a very bright pixel after the tile affine stays the brightest value, where inf
  // would read as a missing pixel to the in-graph finite mask.  inf stays inf, NaN NaN.
  h = select(a >= 0x477ff000u, 0x7bffu, h);
  h = select(a == 0x7f800000u, 0x7c00u, h);
  h = select(a > 0x7f800000u, nan, h);
  return static_cast<uint16_t>(((x >> 16) & 0x8000u) | h);
}

template <typename T>
struct Store;

template <>
struct Store<float> {
  static float nan() { return std::numeric_limits<float>::quiet_NaN(); }
  static float from(float v) { return v; }
};

template <>
struct Store<uint16_t> {
  static uint16_t nan() { return 0x7e00u; }
  static uint16_t from(float v) { return to_half(v); }
};

template <typename T, bool kCount>
PYENGINE_INLINE void gather_windows(const float* tile, int64_t nband, int64_t height, int64_t width,
                    const int64_t* cx, const int64_t* cy, int64_t n, int64_t size,
                    const float* offset, const float* scale, T* out, int32_t* nan_count) {
  const T nan = Store<T>::nan();
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
      T* dst = out + (i * nband + b) * plane;
      const float off = offset[b];
      const float sc = scale[b];
      // This band's NaN pixels of window i: at most 4096^2, so int64 never overflows.
      int64_t nans = 0;
      if (nrow == 0 || ncol == 0) {
        std::fill(dst, dst + plane, nan);
        if (kCount) nan_count[i * nband + b] = static_cast<int32_t>(plane);
        continue;
      }
      const float* src_band = tile + b * height * width;
      for (int64_t r = 0; r < size; ++r) {
        T* drow = dst + r * size;
        if (r < row_first || r >= row_first + nrow) {
          std::fill(drow, drow + size, nan);
          nans += size;
          continue;
        }
        const float* srow = src_band + (y0 + r) * width + (x0 + col_first);
        std::fill(drow, drow + col_first, nan);
        T* d = drow + col_first;
        if (kCount) {
          // restrict and a 32-bit count let the compiler vectorise this loop (a 64-bit
          // count halved the throughput).
          int32_t row_nans = 0;
          const float* __restrict__ s = srow;
          T* __restrict__ dd = d;
          for (int64_t c = 0; c < ncol; ++c) {
            const float v = (s[c] - off) * sc;
            dd[c] = Store<T>::from(v);
            row_nans += static_cast<int32_t>(v != v);
          }
          nans += row_nans + (size - ncol);
        } else {
          const float* __restrict__ s = srow;
          T* __restrict__ dd = d;
          for (int64_t c = 0; c < ncol; ++c) dd[c] = Store<T>::from((s[c] - off) * sc);
        }
        std::fill(drow + col_first + ncol, drow + size, nan);
      }
      // plane <= 4096^2 < INT32_MAX: the count always fits.
      if (kCount) nan_count[i * nband + b] = static_cast<int32_t>(nans);
    }
  }
}

void check_gather(int64_t nband, int64_t height, int64_t width, int64_t n, int64_t size) {
  if (size < 1 || size > 4096) {
    throw ArgumentError("cutout size must be in 1..4096, got " + std::to_string(size));
  }
  if (nband < 1 || height < 0 || width < 0 || n < 0) {
    throw ArgumentError("extents must be non-negative and nband >= 1");
  }
}

}  // namespace

uint16_t float_to_half(float value) { return to_half(value); }

namespace {

template <typename Out>
PYENGINE_INLINE void gather_checked(const float* tile, int64_t nband, int64_t height, int64_t width,
                    const int64_t* cx, const int64_t* cy, int64_t n, int64_t size,
                    const float* offset, const float* scale, Out* out, int32_t* nan_count) {
  check_gather(nband, height, width, n, size);
  if (nan_count) {
    gather_windows<Out, true>(tile, nband, height, width, cx, cy, n, size, offset, scale, out,
                              nan_count);
  } else {
    gather_windows<Out, false>(tile, nband, height, width, cx, cy, n, size, offset, scale, out,
                               nullptr);
  }
}

}  // namespace

PYENGINE_CLONES
void gather_windows_f32(const float* tile, int64_t nband, int64_t height, int64_t width,
                        const int64_t* cx, const int64_t* cy, int64_t n, int64_t size,
                        const float* offset, const float* scale, float* out,
                        int32_t* nan_count) {
  gather_checked(tile, nband, height, width, cx, cy, n, size, offset, scale, out, nan_count);
}

PYENGINE_CLONES
void gather_windows_f16(const float* tile, int64_t nband, int64_t height, int64_t width,
                        const int64_t* cx, const int64_t* cy, int64_t n, int64_t size,
                        const float* offset, const float* scale, uint16_t* out,
                        int32_t* nan_count) {
  gather_checked(tile, nband, height, width, cx, cy, n, size, offset, scale, out, nan_count);
}

}  // namespace pyengine

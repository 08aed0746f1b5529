// pyengine_core.hpp - the contract of pyengine's C++ core.
//
// The core has no dependencies beyond the C++17 standard library, does no I/O
// and knows nothing about Python, FITS or torch.  Callers own every buffer:
// the core only reads the caller's input and fills the caller's output.
//
// Conventions
//   * Arrays are C-ordered.  A tile is (nband, height, width) float32; a batch
//     is (n, nband, size, size).
//   * Every size, index and offset is int64_t: mosaics exceed 2^31 pixels.
//   * Pixel (x, y) is column x, row y of the tile array, 0-based.
//   * A cutout of edge `size` centred on integer pixel (cx, cy) covers rows
//     [cy - size/2, cy - size/2 + size) and columns [cx - size/2, cx - size/2 + size)
//     (integer division), the DESIGN.md cutout contract.
//
// Thread safety
//   Every function is reentrant: it touches only its arguments.  Concurrent
//   calls are safe as long as their output ranges do not overlap.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace pyengine {

// Raised for arguments that break the contract above; bindings map it to ValueError.
class ArgumentError : public std::invalid_argument {
 public:
  explicit ArgumentError(const std::string& what) : std::invalid_argument(what) {}
};

// Copy the windows centred on (cx[i], cy[i]), i = 0..n-1, out of `tile` into
// `out`, applying out = (tile - offset[b]) * scale[b] per band b.
//
//   tile    (nband, height, width) float32, C-contiguous
//   cx, cy  n centre pixels in tile coordinates; any int64 value is accepted
//   size    cutout edge in pixels, 1 <= size <= 4096 (default 64 in pyengine)
//   offset  nband per-band offsets (background), e.g. 0
//   scale   nband per-band scales (1/noise), e.g. 1
//   out     (n, nband, size, size) float32, C-contiguous, fully written
//
// Pixels of a window that fall outside the tile are NaN; NaN pixels of the
// tile stay NaN.  Throws ArgumentError on a bad size or negative extents.
void gather_windows_f32(const float* tile, int64_t nband, int64_t height, int64_t width,
                        const int64_t* cx, const int64_t* cy, int64_t n, int64_t size,
                        const float* offset, const float* scale, float* out);

}  // namespace pyengine

// pyengine_core.hpp - the contract of pyengine's C++ core.
//
// The core has no dependencies beyond the C++17 standard library, does no I/O
// and knows nothing about Python, FITS or torch.  Callers own every buffer:
// the core only reads the caller's input and fills the caller's output.
//
// Conventions
//   * Arrays are C-ordered.  A tile is (nband, height, width) float32; a batch
//     is (n, nband, size, size) float32, or IEEE binary16 stored as uint16_t.
//   * Every size, index and offset is int64_t: mosaics exceed 2^31 pixels.
//   * Pixel (x, y) is column x, row y of the tile array, 0-based.
//   * A cutout of edge `size` centred on integer pixel (cx, cy) covers rows
//     [cy - size/2, cy - size/2 + size) and columns [cx - size/2, cx - size/2 + size)
//     (integer division), the DESIGN.md cutout contract.
//
// Thread safety
//   Every free function is reentrant: it touches only its arguments.  Concurrent
//   calls are safe as long as their output ranges do not overlap.  BatchRing is
//   safe to call from several threads; see its own comment.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace pyengine {

// Raised for arguments that break the contract above; bindings map it to ValueError.
class ArgumentError : public std::invalid_argument {
 public:
  explicit ArgumentError(const std::string& what) : std::invalid_argument(what) {}
};

// float32 -> IEEE binary16 bits: round to nearest even, finite values beyond the range
// saturated to +-65504 (not +-inf: a bright pixel must not read as missing), +-inf kept,
// subnormals exact, NaN stays NaN (sign and top payload bits kept, as NumPy does).
uint16_t float_to_half(float value);

// Copy the windows centred on (cx[i], cy[i]), i = 0..n-1, out of `tile` into
// `out`, applying out = (tile - offset[b]) * scale[b] per band b.
//
//   tile       (nband, height, width) float32, C-contiguous
//   cx, cy     n centre pixels in tile coordinates; any int64 value is accepted
//   size       cutout edge in pixels, 1 <= size <= 4096 (default 64 in pyengine)
//   offset     nband per-band offsets (background), e.g. 0
//   scale      nband per-band scales (1/noise), e.g. 1
//   out        (n, nband, size, size), C-contiguous, fully written
//   nan_count  null, or n * nband counters, C-ordered (n, nband): nan_count[i * nband + b]
//              = NaN pixels of window i in band b (at most size^2, so never saturating),
//              counted in the same pass as the copy
//
// Pixels of a window that fall outside the tile are NaN; NaN pixels of the
// tile stay NaN.  Throws ArgumentError on a bad size or negative extents.
// gather_windows_f16 computes the same float32 values and stores them as
// float_to_half(value).
void gather_windows_f32(const float* tile, int64_t nband, int64_t height, int64_t width,
                        const int64_t* cx, const int64_t* cy, int64_t n, int64_t size,
                        const float* offset, const float* scale, float* out,
                        int32_t* nan_count = nullptr);
void gather_windows_f16(const float* tile, int64_t nband, int64_t height, int64_t width,
                        const int64_t* cx, const int64_t* cy, int64_t n, int64_t size,
                        const float* offset, const float* scale, uint16_t* out,
                        int32_t* nan_count = nullptr);

enum class Dtype { float32, float16 };

// A ring of K batch slots filled by a pool of worker threads.
//
// The caller owns the K slot buffers, each (capacity, nband, size, size) of
// `dtype`, and the optional per-slot int32 nan_count buffers of `capacity * nband`
// entries, (capacity, nband) C-ordered as gather_windows_f32's (null: none).  They, and every tile/cx/cy/offset/scale passed to
// fill(), must stay alive until the slot's wait() has returned (or close()).
//
// Slot life cycle, guarded by one mutex:
//   FREE --acquire--> FILLING --wait--> READY --release--> FREE
// fill() is allowed while FILLING, any number of times (several tiles may fill
// one slot); wait() blocks until every job enqueued for the slot is done, then
// rethrows the first exception a worker raised for it.
//
// Thread safety: every method may be called from any thread.  A slot is meant
// for one producer (acquire, fill) and one consumer (wait, release) at a time.
// After close() every method but close() throws ArgumentError("BatchRing is closed");
// close() discards jobs not yet started (their slots' wait() then throws),
// lets running jobs finish, joins the workers and wakes every blocked caller.
class BatchRing {
 public:
  BatchRing(std::vector<void*> slots, std::vector<int32_t*> nan_counts, Dtype dtype,
            int64_t capacity, int64_t nband, int64_t size, int64_t threads);
  ~BatchRing();  // close()
  BatchRing(const BatchRing&) = delete;
  BatchRing& operator=(const BatchRing&) = delete;

  // The index of a FREE slot, now FILLING.  timeout_ms < 0 waits forever;
  // otherwise returns -1 when no slot became free within timeout_ms.
  int64_t acquire(int64_t timeout_ms = -1);

  // Enqueue the gather of the n windows (cx[i], cy[i]) of `tile` into rows
  // [start, start + n) of `slot`, split across the workers.  Arguments are
  // checked here, in the calling thread; nband must match the ring's.
  void fill(int64_t slot, int64_t start, const float* tile, int64_t nband, int64_t height,
            int64_t width, const int64_t* cx, const int64_t* cy, int64_t n, const float* offset,
            const float* scale);

  // Enqueue any job accounted to `slot` (which must be FILLING); an exception it
  // throws surfaces from wait(slot).
  void post(int64_t slot, std::function<void()> job);

  void wait(int64_t slot);
  void release(int64_t slot);
  void close();

  int64_t nslots() const;
  int64_t capacity() const;
  int64_t nband() const;
  int64_t size() const;
  int64_t threads() const;
  Dtype dtype() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pyengine

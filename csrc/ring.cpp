// ring.cpp - BatchRing of pyengine_core.hpp: batch slots filled by a worker pool.
//
// One mutex guards every slot state, job counter and the queue.  Workers hold
// it only to pop a job and to account for its end, never while gathering.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>

#include "pyengine_core.hpp"

namespace pyengine {

namespace {

enum class SlotState { free, filling, ready };

struct Job {
  int64_t slot;
  std::function<void()> run;
};

constexpr int64_t kMaxThreads = 1024;
constexpr int64_t kMaxWaitMs = 1000000000000;  // ~31 years: no overflow in nanoseconds

}  // namespace

struct BatchRing::Impl {
  std::vector<void*> slots;
  std::vector<int32_t*> nan_counts;
  Dtype dtype;
  int64_t capacity, nband, size;

  std::mutex mu;
  std::condition_variable work_cv;  // queue non-empty, or closed
  std::condition_variable free_cv;  // a slot became FREE, or closed
  std::condition_variable done_cv;  // a slot's pending count reached 0
  std::vector<SlotState> state;
  std::vector<int64_t> pending;
  std::vector<std::exception_ptr> error;
  std::deque<Job> queue;
  bool closed = false;

  std::mutex join_mu;
  std::vector<std::thread> workers;

  // check_open and check_filling read mutable state: callers hold mu.
  void check_open() const {
    if (closed) throw ArgumentError("BatchRing is closed");
  }
  void check_slot(int64_t slot) const {
    if (slot < 0 || slot >= static_cast<int64_t>(slots.size())) {
      throw ArgumentError("slot must be in 0.." + std::to_string(slots.size() - 1) + ", got " +
                          std::to_string(slot));
    }
  }
  void check_filling(int64_t slot) const {
    check_open();
    check_slot(slot);
    if (state[slot] != SlotState::filling) {
      throw ArgumentError("slot " + std::to_string(slot) + " is not acquired for filling");
    }
  }

  void work() {
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mu);
        work_cv.wait(lock, [this] { return closed || !queue.empty(); });
        if (queue.empty()) return;  // closed: close() discarded what was left
        job = std::move(queue.front());
        queue.pop_front();
      }
      std::exception_ptr err;
      try {
        job.run();
      } catch (...) {
        err = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(mu);
      if (err && !error[job.slot]) error[job.slot] = err;
      if (--pending[job.slot] == 0) done_cv.notify_all();
    }
  }
};

BatchRing::BatchRing(std::vector<void*> slots, std::vector<int32_t*> nan_counts, Dtype dtype,
                     int64_t capacity, int64_t nband, int64_t size, int64_t threads)
    : impl_(std::make_unique<Impl>()) {
  if (slots.empty()) throw ArgumentError("a BatchRing needs at least one slot");
  if (std::find(slots.begin(), slots.end(), nullptr) != slots.end()) {
    throw ArgumentError("slot buffers must not be null");
  }
  if (nan_counts.empty()) nan_counts.assign(slots.size(), nullptr);
  if (nan_counts.size() != slots.size()) {
    throw ArgumentError("nan_counts must have one buffer (or null) per slot: " +
                        std::to_string(slots.size()) + ", got " +
                        std::to_string(nan_counts.size()));
  }
  if (capacity < 1 || nband < 1) throw ArgumentError("slot capacity and nband must be >= 1");
  if (size < 1 || size > 4096) {
    throw ArgumentError("cutout size must be in 1..4096, got " + std::to_string(size));
  }
  if (threads < 1 || threads > kMaxThreads) {
    throw ArgumentError("threads must be in 1.." + std::to_string(kMaxThreads) + ", got " +
                        std::to_string(threads));
  }
  Impl& r = *impl_;
  r.slots = std::move(slots);
  r.nan_counts = std::move(nan_counts);
  r.dtype = dtype;
  r.capacity = capacity;
  r.nband = nband;
  r.size = size;
  r.state.assign(r.slots.size(), SlotState::free);
  r.pending.assign(r.slots.size(), 0);
  r.error.assign(r.slots.size(), nullptr);
  try {
    for (int64_t t = 0; t < threads; ++t) r.workers.emplace_back([&r] { r.work(); });
  } catch (...) {
    close();
    throw;
  }
}

BatchRing::~BatchRing() { close(); }

int64_t BatchRing::acquire(int64_t timeout_ms) {
  Impl& r = *impl_;
  std::unique_lock<std::mutex> lock(r.mu);
  r.check_open();
  auto some_free = [&r] {
    return r.closed ||
           std::find(r.state.begin(), r.state.end(), SlotState::free) != r.state.end();
  };
  if (timeout_ms < 0) {
    r.free_cv.wait(lock, some_free);
  } else if (!r.free_cv.wait_for(lock, std::chrono::milliseconds(std::min(timeout_ms, kMaxWaitMs)),
                                 some_free)) {
    return -1;
  }
  r.check_open();
  const auto it = std::find(r.state.begin(), r.state.end(), SlotState::free);
  *it = SlotState::filling;
  const int64_t slot = it - r.state.begin();
  r.error[slot] = nullptr;
  return slot;
}

void BatchRing::fill(int64_t slot, int64_t start, const float* tile, int64_t nband,
                     int64_t height, int64_t width, const int64_t* cx, const int64_t* cy,
                     int64_t n, const float* offset, const float* scale) {
  Impl& r = *impl_;
  r.check_slot(slot);  // the slot count never changes: no lock needed yet
  if (nband != r.nband) {
    throw ArgumentError("tile has " + std::to_string(nband) + " bands, the ring " +
                        std::to_string(r.nband));
  }
  if (height < 0 || width < 0) throw ArgumentError("tile extents must be non-negative");
  if (n < 0 || start < 0 || start > r.capacity || n > r.capacity - start) {
    throw ArgumentError("rows [" + std::to_string(start) + ", " + std::to_string(start) + " + " +
                        std::to_string(n) + ") do not fit a slot of capacity " +
                        std::to_string(r.capacity));
  }
  if (n > 0 && (!tile || !cx || !cy || !offset || !scale)) {
    throw ArgumentError("tile, cx, cy, offset and scale must not be null");
  }
  // Chunks of whole windows, one per worker: few jobs, each one large.
  const int64_t nthread = static_cast<int64_t>(r.workers.size());
  const int64_t chunk = std::max<int64_t>(1, (n + nthread - 1) / nthread);
  const int64_t nchunk = n == 0 ? 0 : (n + chunk - 1) / chunk;
  std::vector<Job> jobs;
  jobs.reserve(static_cast<size_t>(nchunk));
  const int64_t S = r.size, row_values = nband * S * S;
  void* base = r.slots[slot];
  int32_t* counts = r.nan_counts[slot];
  const Dtype dtype = r.dtype;
  for (int64_t c = 0; c < nchunk; ++c) {
    const int64_t first = c * chunk, count = std::min(chunk, n - first), row = start + first;
    int32_t* nan = counts ? counts + row * nband : nullptr;  // (capacity, nband) counts
    const int64_t* x = cx + first;
    const int64_t* y = cy + first;
    std::function<void()> run;
    if (dtype == Dtype::float32) {
      float* out = static_cast<float*>(base) + row * row_values;
      run = [=] {
        gather_windows_f32(tile, nband, height, width, x, y, count, S, offset, scale, out, nan);
      };
    } else {
      uint16_t* out = static_cast<uint16_t*>(base) + row * row_values;
      run = [=] {
        gather_windows_f16(tile, nband, height, width, x, y, count, S, offset, scale, out, nan);
      };
    }
    jobs.push_back(Job{slot, std::move(run)});
  }
  std::lock_guard<std::mutex> lock(r.mu);
  r.check_filling(slot);
  for (Job& job : jobs) r.queue.push_back(std::move(job));
  r.pending[slot] += nchunk;
  if (nchunk == 1) {
    r.work_cv.notify_one();
  } else if (nchunk > 1) {
    r.work_cv.notify_all();
  }
}

void BatchRing::post(int64_t slot, std::function<void()> job) {
  Impl& r = *impl_;
  if (!job) throw ArgumentError("post() needs a job");
  std::lock_guard<std::mutex> lock(r.mu);
  r.check_filling(slot);
  r.queue.push_back(Job{slot, std::move(job)});
  r.pending[slot] += 1;
  r.work_cv.notify_one();
}

void BatchRing::wait(int64_t slot) {
  Impl& r = *impl_;
  std::unique_lock<std::mutex> lock(r.mu);
  r.check_slot(slot);
  // Wait for the slot's jobs even when closed: the caller may free its buffers next.
  r.done_cv.wait(lock, [&] { return r.pending[slot] == 0; });
  if (std::exception_ptr err = std::exchange(r.error[slot], nullptr)) {
    if (r.state[slot] == SlotState::filling) r.state[slot] = SlotState::ready;
    std::rethrow_exception(err);
  }
  r.check_open();
  if (r.state[slot] == SlotState::free) {
    throw ArgumentError("slot " + std::to_string(slot) + " is not acquired");
  }
  r.state[slot] = SlotState::ready;
}

void BatchRing::release(int64_t slot) {
  Impl& r = *impl_;
  std::lock_guard<std::mutex> lock(r.mu);
  r.check_open();
  r.check_slot(slot);
  if (r.state[slot] != SlotState::ready) {
    throw ArgumentError("slot " + std::to_string(slot) + " is not ready: call wait(" +
                        std::to_string(slot) + ") before release");
  }
  r.state[slot] = SlotState::free;
  r.free_cv.notify_one();
}

void BatchRing::close() {
  Impl& r = *impl_;
  {
    std::lock_guard<std::mutex> lock(r.mu);
    if (!r.closed) {
      r.closed = true;
      for (const Job& job : r.queue) {
        if (!r.error[job.slot]) {
          r.error[job.slot] = std::make_exception_ptr(
              ArgumentError("BatchRing closed before slot " + std::to_string(job.slot) +
                            " was filled"));
        }
        --r.pending[job.slot];
      }
      r.queue.clear();
      r.work_cv.notify_all();
      r.free_cv.notify_all();
      r.done_cv.notify_all();
    }
  }
  std::lock_guard<std::mutex> join_lock(r.join_mu);
  for (std::thread& t : r.workers) {
    if (t.joinable()) t.join();
  }
}

int64_t BatchRing::nslots() const { return static_cast<int64_t>(impl_->slots.size()); }
int64_t BatchRing::capacity() const { return impl_->capacity; }
int64_t BatchRing::nband() const { return impl_->nband; }
int64_t BatchRing::size() const { return impl_->size; }
int64_t BatchRing::threads() const { return static_cast<int64_t>(impl_->workers.size()); }
Dtype BatchRing::dtype() const { return impl_->dtype; }

}  // namespace pyengine

// sigbus.cpp - see sigbus.hpp.  Everything the handler touches is async-signal-safe:
// lock-free atomics, plain reads of the table, write(2), sigaction(2), raise(3), _exit(2).
#include "sigbus.hpp"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

namespace pyengine::sigbus {
namespace {

enum State : int { kFree = 0, kWriting = 1, kReady = 2 };

struct Region {
  std::atomic<int> state{kFree};
  std::uintptr_t start = 0;
  std::size_t length = 0;
  std::size_t path_len = 0;
  char path[kMaxPath] = {};
};

Region g_regions[kMaxRegions];
std::atomic<int> g_exit_code{75};
std::atomic<bool> g_installed{false};
struct sigaction g_previous;

void put(const char* text, std::size_t n) {
  while (n > 0) {
    const ssize_t k = ::write(STDERR_FILENO, text, n);
    if (k <= 0) return;
    text += k;
    n -= static_cast<std::size_t>(k);
  }
}

void put(const char* text) { put(text, std::strlen(text)); }

const Region* find(std::uintptr_t addr) {
  for (const Region& r : g_regions) {
    if (r.state.load(std::memory_order_acquire) == kReady && addr >= r.start &&
        addr - r.start < r.length) {
      return &r;
    }
  }
  return nullptr;
}

void handler(int sig, siginfo_t* info, void*) {
  const Region* region = nullptr;
  if (info != nullptr && info->si_code == BUS_ADRERR) {
    region = find(reinterpret_cast<std::uintptr_t>(info->si_addr));
  }
  if (region == nullptr) {  // not ours: the previous action handles it
    ::sigaction(SIGBUS, &g_previous, nullptr);
    if (info == nullptr || info->si_code <= 0) ::raise(sig);  // sent, not a fault: resend
    return;  // a fault: the instruction faults again, now under the previous action
  }
  put("pyengine: input file ");
  put(region->path, region->path_len);
  put(" shrank while being read (SIGBUS); completed tiles are journalled; restore the file "
      "and resume with --resume\n");
  ::_exit(g_exit_code.load(std::memory_order_relaxed));
}

}  // namespace

int register_region(std::uintptr_t start, std::size_t length, const char* path) {
  for (int i = 0; i < kMaxRegions; ++i) {
    int expected = kFree;
    Region& r = g_regions[i];
    if (!r.state.compare_exchange_strong(expected, kWriting, std::memory_order_acq_rel)) {
      continue;
    }
    r.start = start;
    r.length = length;
    const std::size_t n = std::strlen(path);
    r.path_len = n < kMaxPath ? n : kMaxPath;
    std::memcpy(r.path, path, r.path_len);
    r.state.store(kReady, std::memory_order_release);
    return i;
  }
  return -1;
}

void unregister_region(int slot) {
  if (slot < 0 || slot >= kMaxRegions) return;
  g_regions[slot].state.store(kFree, std::memory_order_release);
}

void install(int exit_code) {
  g_exit_code.store(exit_code, std::memory_order_relaxed);
  if (g_installed.exchange(true)) return;
  struct sigaction action;
  std::memset(&action, 0, sizeof action);
  action.sa_sigaction = handler;
  action.sa_flags = SA_SIGINFO;
  sigemptyset(&action.sa_mask);
  ::sigaction(SIGBUS, &action, &g_previous);
}

bool installed() { return g_installed.load(); }

}  // namespace pyengine::sigbus

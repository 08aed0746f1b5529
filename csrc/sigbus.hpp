// sigbus.hpp - a one-line message instead of "Bus error" when a mapped input shrinks.
//
// pyengine reads uncompressed FITS images through read-only memory maps.  If a
// file is truncated while it is mapped, touching a page past its new end raises
// SIGBUS, which by default kills the process without a word (exit 135 from a
// shell).  pyengine checks each file's size before every read, so only a
// truncation racing with a read can still fault; this handler covers that window.
//
// The regions table says which address ranges are mappings of which files.
// Registering is cheap and always done (pyengine.io.mosaic registers every map);
// the handler itself is installed only on request (``pyengine scan`` does, the
// library never does on import: an embedding application may have its own).
//
// On SIGBUS with si_code BUS_ADRERR at an address inside a registered region, the
// handler write()s one line naming the file to stderr and _exit()s with the code
// given to install() - both async-signal-safe.  Any other SIGBUS (another cause,
// another address, one sent with kill) goes to the action that was in place before
// install(): the handler puts that action back and lets the fault happen again.
//
// This is the one piece of csrc/ that does I/O (a write to fd 2): it is a process-wide
// signal handler, not part of the compute core of pyengine_core.hpp.
//
// Thread safety: register_region / unregister_region may be called from any thread
// at once (lock-free slots); the handler only reads the table.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pyengine::sigbus {

// Slots in the regions table; register_region returns -1 when all are taken.
constexpr int kMaxRegions = 256;
// Bytes of a path kept for the message (longer paths are cut).
constexpr std::size_t kMaxPath = 1024;

// Record [start, start + length) as a mapping of file `path`; the slot, or -1 (table full).
int register_region(std::uintptr_t start, std::size_t length, const char* path);
// Forget a slot from register_region (a slot < 0 is ignored).
void unregister_region(int slot);
// Install the handler (once per process; later calls only change the exit code).
void install(int exit_code);
// Whether install() has run in this process.
bool installed();

}  // namespace pyengine::sigbus

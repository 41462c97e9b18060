// A fault injector for the write-fault tests, loaded with LD_PRELOAD into `dijiang`: writes to
// files whose path contains $DIJIANG_FAULT_PATH fail or end the process, as a full disk or a
// killed rank would, while every other write goes through.
//
//   DIJIANG_FAULT=enospc  the writes after the first $DIJIANG_FAULT_AFTER bytes (default 0) written
//                         to matching files fail with ENOSPC ("No space left on device");
//   DIJIANG_FAULT=kill    the first write to a matching file kills the process with SIGKILL.
//
// It wraps write, pwrite, pwrite64 and writev: what HDF5's default file driver and the C++
// streams call. The path of a descriptor is read from /proc/self/fd, so only Linux is supported.
#include <dlfcn.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

enum class Fault { none, enospc, kill };

struct Settings {
  Fault fault = Fault::none;
  const char* path = nullptr;
  long long after = 0;
};

const Settings& settings() {
  static const Settings s = [] {
    Settings out;
    const char* fault = std::getenv("DIJIANG_FAULT");
    out.path = std::getenv("DIJIANG_FAULT_PATH");
    if (const char* after = std::getenv("DIJIANG_FAULT_AFTER")) out.after = std::atoll(after);
    if (fault != nullptr && out.path != nullptr && *out.path != '\0') {
      if (std::strcmp(fault, "enospc") == 0) out.fault = Fault::enospc;
      if (std::strcmp(fault, "kill") == 0) out.fault = Fault::kill;
    }
    return out;
  }();
  return s;
}

std::atomic<long long> written{0};

bool matches(int fd) {
  char link[64], target[4096];
  std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  const ssize_t n = ::readlink(link, target, sizeof target - 1);
  if (n <= 0) return false;
  target[n] = '\0';
  return std::strstr(target, settings().path) != nullptr;
}

// Whether a write of `bytes` to `fd` goes through; kills the process or sets errno otherwise.
bool allow(int fd, size_t bytes) {
  const Settings& s = settings();
  if (s.fault == Fault::none || fd <= 2 || !matches(fd)) return true;
  if (s.fault == Fault::kill) ::kill(::getpid(), SIGKILL);
  if (written.fetch_add(static_cast<long long>(bytes)) + static_cast<long long>(bytes) <= s.after) return true;
  errno = ENOSPC;
  return false;
}

template <typename F>
F next(const char* name) {
  return reinterpret_cast<F>(::dlsym(RTLD_NEXT, name));
}

}  // namespace

extern "C" {

ssize_t write(int fd, const void* buffer, size_t count) {
  static const auto real = next<ssize_t (*)(int, const void*, size_t)>("write");
  return allow(fd, count) ? real(fd, buffer, count) : -1;
}

ssize_t pwrite(int fd, const void* buffer, size_t count, off_t offset) {
  static const auto real = next<ssize_t (*)(int, const void*, size_t, off_t)>("pwrite");
  return allow(fd, count) ? real(fd, buffer, count, offset) : -1;
}

ssize_t pwrite64(int fd, const void* buffer, size_t count, off64_t offset) {
  static const auto real = next<ssize_t (*)(int, const void*, size_t, off64_t)>("pwrite64");
  return allow(fd, count) ? real(fd, buffer, count, offset) : -1;
}

ssize_t writev(int fd, const struct iovec* vector, int count) {
  static const auto real = next<ssize_t (*)(int, const struct iovec*, int)>("writev");
  size_t bytes = 0;
  for (int i = 0; i < count; ++i) bytes += vector[i].iov_len;
  return allow(fd, bytes) ? real(fd, vector, count) : -1;
}

}  // extern "C"

// The rendezvous segment of the emulated NCCL (nccl_segment.h).
#include "nccl_segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <random>

#include "internal.h"

namespace dj::emu::nccl {

namespace {

constexpr char kMagic[] = "dj-emu-nccl";

size_t header_bytes() { return (sizeof(Header) + 4095) / 4096 * 4096; }
size_t segment_bytes() { return header_bytes() + kMaxRanks * kChunk * sizeof(float); }

// Process-wide: ids created here (their fd keeps the unlinked segment reachable) and one mapping
// per segment.
struct Mapping {
  void* base = nullptr;
  int users = 0;
};

std::mutex g_mutex;
std::map<std::string, int> g_created;     // id text -> fd
std::map<std::string, Mapping> g_mapped;  // id text -> mapping

struct Id {
  int pid = 0, fd = -1;
  std::string text;
};

bool parse(const ncclUniqueId& id, Id* out) {
  char magic[16] = {}, name[96] = {};
  int pid = 0, fd = -1;
  std::string text(id.internal, strnlen(id.internal, sizeof id.internal));
  if (std::sscanf(text.c_str(), "%15s %d %d %95s", magic, &pid, &fd, name) != 4 || std::strcmp(magic, kMagic) != 0)
    return false;
  *out = Id{pid, fd, text};
  return true;
}

}  // namespace

std::string create_segment(ncclUniqueId* id) {
  static std::atomic<unsigned> counter{0};
  std::random_device random;
  const std::string name = strprintf("/dj-emu-nccl-%d-%u-%08x", static_cast<int>(getpid()), counter.fetch_add(1),
                                     static_cast<unsigned>(random()));
  const int fd = shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd < 0) return strprintf("shm_open %s: %s", name.c_str(), std::strerror(errno));
  shm_unlink(name.c_str());  // reachable through the descriptor only: nothing outlives the job
  if (ftruncate(fd, static_cast<off_t>(segment_bytes())) != 0) {
    close(fd);
    return strprintf("ftruncate: %s", std::strerror(errno));
  }
  void* map = mmap(nullptr, header_bytes(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) {
    close(fd);
    return strprintf("mmap: %s", std::strerror(errno));
  }
  auto* h = static_cast<Header*>(map);
  pthread_mutexattr_t mutex_attr;
  pthread_mutexattr_init(&mutex_attr);
  pthread_mutexattr_setpshared(&mutex_attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&mutex_attr, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(&h->mutex, &mutex_attr);
  pthread_mutexattr_destroy(&mutex_attr);
  pthread_condattr_t cond_attr;
  pthread_condattr_init(&cond_attr);
  pthread_condattr_setpshared(&cond_attr, PTHREAD_PROCESS_SHARED);
  pthread_condattr_setclock(&cond_attr, CLOCK_MONOTONIC);
  pthread_cond_init(&h->cond, &cond_attr);
  pthread_condattr_destroy(&cond_attr);
  h->magic = kHeaderMagic;
  munmap(map, header_bytes());
  *id = ncclUniqueId{};
  std::snprintf(id->internal, sizeof id->internal, "%s %d %d %s", kMagic, static_cast<int>(getpid()), fd,
                name.c_str());
  std::lock_guard<std::mutex> lock(g_mutex);
  g_created[id->internal] = fd;
  return "";
}

std::string attach_segment(const ncclUniqueId& unique_id, Segment* out) {
  Id id;
  if (!parse(unique_id, &id)) return "not a unique id of this emulation";
  std::lock_guard<std::mutex> lock(g_mutex);
  Mapping& m = g_mapped[id.text];
  if (m.base == nullptr) {
    // The creator's descriptor: our own, or another process's through /proc.
    const std::string path = strprintf("/proc/%d/fd/%d", id.pid, id.fd);
    const int fd = id.pid == static_cast<int>(getpid()) ? dup(id.fd) : open(path.c_str(), O_RDWR);
    if (fd < 0) {
      g_mapped.erase(id.text);
      return strprintf("cannot open the rendezvous %s (%s): the process that made the unique id must still run",
                       path.c_str(), std::strerror(errno));
    }
    void* map = mmap(nullptr, segment_bytes(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
      g_mapped.erase(id.text);
      return strprintf("mmap: %s", std::strerror(errno));
    }
    m.base = map;
  }
  ++m.users;
  out->key = id.text;
  out->header = static_cast<Header*>(m.base);
  out->slots = reinterpret_cast<float*>(static_cast<char*>(m.base) + header_bytes());
  return "";
}

void segment_complete(const std::string& key) {
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_created.find(key);
  if (it != g_created.end()) {
    close(it->second);
    g_created.erase(it);
  }
}

void detach_segment(const std::string& key) {
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_mapped.find(key);
  if (it != g_mapped.end() && --it->second.users == 0) {
    munmap(it->second.base, segment_bytes());  // the segment is gone once every rank has left
    g_mapped.erase(it);
  }
}

timespec deadline_after(double seconds) {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  const double whole = static_cast<double>(static_cast<long long>(seconds));
  ts.tv_sec += static_cast<time_t>(whole);
  ts.tv_nsec += static_cast<long>((seconds - whole) * 1e9);
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec += 1;
    ts.tv_nsec -= 1000000000L;
  }
  return ts;
}

void lock(Header* h) {
  const int r = pthread_mutex_lock(&h->mutex);
  if (r == EOWNERDEAD) {  // a rank died holding the lock
    pthread_mutex_consistent(&h->mutex);
    h->failed = 1;
  }
}

void unlock(Header* h) { pthread_mutex_unlock(&h->mutex); }

}  // namespace dj::emu::nccl

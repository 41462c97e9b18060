// The rendezvous of the emulated NCCL (nccl.cpp): a POSIX shared-memory segment per unique id,
// created by ncclGetUniqueId and unlinked at once (a crashed job leaves nothing behind), opened by
// the ranks (threads of one process or separate processes on this host) through
// /proc/<creator>/fd/<fd> and mapped once per process. It holds a header (a process-shared robust
// mutex and condition variable, the ranks' records) and one chunk of floats per rank.
#pragma once
#include <nccl.h>
#include <pthread.h>

#include <cerrno>
#include <cstdint>
#include <ctime>
#include <string>

namespace dj::emu::nccl {

constexpr int kMaxRanks = 64;
constexpr size_t kChunk = 32768;  // floats per rank and round

struct RankRecord {
  int present;
  int pid;
  int device;
  int kind;  // collective being entered, for the consistency check
  int root;
  unsigned long long count;
};

struct Header {
  uint64_t magic;
  pthread_mutex_t mutex;
  pthread_cond_t cond;
  int nranks;
  int joined;
  int failed;  // a rank failed or aborted: the others stop waiting
  int arrived;
  unsigned long long generation;
  RankRecord ranks[kMaxRanks];
};

constexpr uint64_t kHeaderMagic = 0x6e63636c2d656d75ull;

// Creates a segment and writes its unique id; "" or why not.
std::string create_segment(ncclUniqueId* id);

struct Segment {
  std::string key;  // the id's text: names the mapping
  Header* header = nullptr;
  float* slots = nullptr;  // kMaxRanks chunks of kChunk floats
};
// Maps the segment `id` names (once per process; counted); "" or why not.
std::string attach_segment(const ncclUniqueId& id, Segment* out);
// Every rank has mapped the segment: the creator's descriptor can close.
void segment_complete(const std::string& key);
// Drops one use of the mapping; the last unmaps it.
void detach_segment(const std::string& key);

// The monotonic clock `seconds` from now (the condition variable's clock).
timespec deadline_after(double seconds);

// The header's lock; taking it over from a rank that died marks the job failed.
void lock(Header* h);
void unlock(Header* h);

enum class Waited { Done, Failed, Timeout };

// With the lock held: waits until done() or a rank failed or the deadline.
template <class Done>
Waited wait_for(Header* h, Done&& done, const timespec& deadline) {
  while (!done()) {
    if (h->failed) return Waited::Failed;
    const int r = pthread_cond_timedwait(&h->cond, &h->mutex, &deadline);
    if (r == EOWNERDEAD) {
      pthread_mutex_consistent(&h->mutex);
      h->failed = 1;
    } else if (r == ETIMEDOUT) {
      return done() ? Waited::Done : Waited::Timeout;
    }
  }
  return Waited::Done;
}

}  // namespace dj::emu::nccl

// NCCL of the CUDA emulation. The unique id names a shared-memory segment (nccl_segment.cpp) that
// the ranks, threads of one process or separate processes on this host, map. Collectives are stream operations: each runs on its rank's device
// worker, exchanging data through per-rank chunks of the segment between barriers of a
// process-shared mutex and condition variable. Every wait is timed (DIJIANG_EMU_NCCL_TIMEOUT_S):
// a collective whose peer never arrives fails with ncclSystemError, reported by
// ncclCommGetAsyncError; its stream stays blocked, as behind a hung NCCL kernel, until
// ncclCommAbort. Sums run in rank order, so every rank gets the same, deterministic result. The
// ranks also check that they call the same collectives with the same counts.
#include <nccl.h>

#include <pthread.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "internal.h"
#include "nccl_segment.h"

using namespace dj::emu::nccl;

namespace {

using dj::emu::strprintf;

thread_local int t_group_depth = 0;
thread_local std::string t_last_error;

enum Kind { kAllReduce, kReduce, kBroadcast, kReduceScatter, kAllGather };
const char* kind_name(int kind) {
  static const char* names[] = {"ncclAllReduce", "ncclReduce", "ncclBroadcast", "ncclReduceScatter", "ncclAllGather"};
  return kind >= 0 && kind < 5 ? names[kind] : "?";
}

struct Collective {
  int kind;
  const float* send;
  float* recv;
  size_t count;  // per rank (recvcount / sendcount) or the whole buffer
  int root;
};

}  // namespace

struct ncclComm {
  std::string id;
  Header* header = nullptr;
  float* slots = nullptr;
  int rank = 0, nranks = 1, device = 0;
  std::mutex mutex;
  std::condition_variable idle;
  int pending = 0;
  std::vector<std::pair<dj::emu::Device*, dj::emu::Op*>> stuck;
  bool aborted = false;
  std::atomic<int> async_error{ncclSuccess};
  std::string last_error;

  float* slot(int q) const { return slots + static_cast<size_t>(q) * kChunk; }
  std::string where() const { return strprintf("rank %d of %d (device %d)", rank, nranks, device); }
};

namespace {

ncclResult_t fail(ncclResult_t result, std::string message) {
  t_last_error = std::move(message);
  return result;
}

// Every rank arrives; "" or why not.
std::string barrier(ncclComm& c, const char* during) {
  Header* h = c.header;
  lock(h);
  const unsigned long long generation = h->generation;
  if (++h->arrived == h->nranks) {
    h->arrived = 0;
    ++h->generation;
    pthread_cond_broadcast(&h->cond);
    unlock(h);
    return "";
  }
  const double timeout = dj::emu::config().nccl_timeout_s;
  const Waited w = wait_for(h, [&] { return h->generation != generation; }, deadline_after(timeout));
  std::string error;
  if (w == Waited::Timeout) {
    error = strprintf("%s: %s waited %g s for its peers (DIJIANG_EMU_NCCL_TIMEOUT_S)", c.where().c_str(), during,
                      timeout);
    h->failed = 1;
    pthread_cond_broadcast(&h->cond);
  } else if (w == Waited::Failed) {
    error = strprintf("%s: %s stopped: a peer failed or aborted", c.where().c_str(), during);
  }
  unlock(h);
  return error;
}

// Runs one collective on the calling (worker) thread: "" or the failure.
std::string execute(ncclComm& c, const Collective& op) {
  Header* h = c.header;
  const char* name = kind_name(op.kind);
  RankRecord& mine = h->ranks[c.rank];
  mine.kind = op.kind;
  mine.root = op.root;
  mine.count = op.count;
  std::string error = barrier(c, name);
  if (!error.empty()) return error;
  for (int q = 0; q < c.nranks; ++q) {
    const RankRecord& r = h->ranks[q];
    if (r.kind != op.kind || r.count != op.count || r.root != op.root)
      return strprintf("%s: collective mismatch: this rank called %s(count %zu, root %d) while rank %d called "
                       "%s(count %llu, root %d)",
                       c.where().c_str(), name, op.count, op.root, q, kind_name(r.kind), r.count, r.root);
  }
  const int n = c.nranks;
  bool rounds = false;
  auto sum_into = [&](float* out, size_t len) {
    for (size_t i = 0; i < len; ++i) {
      float acc = c.slot(0)[i];
      for (int q = 1; q < n; ++q) acc += c.slot(q)[i];
      out[i] = acc;
    }
  };
  // One round: publish (this rank's part into its slot), everyone arrives, consume, everyone is done.
  auto round = [&](auto&& publish, auto&& consume) -> std::string {
    rounds = true;
    publish();
    std::string e = barrier(c, name);
    if (!e.empty()) return e;
    consume();
    return barrier(c, name);
  };
  for (size_t blocks = op.kind == kReduceScatter ? static_cast<size_t>(n) : 1, b = 0; b < blocks; ++b) {
    for (size_t off = 0; off < op.count; off += kChunk) {
      const size_t len = std::min(kChunk, op.count - off);
      const size_t bytes = len * sizeof(float);
      switch (op.kind) {
        case kAllReduce:
        case kReduce:
          error = round([&] { std::memcpy(c.slot(c.rank), op.send + off, bytes); },
                        [&] {
                          if (op.kind == kAllReduce || c.rank == op.root) sum_into(op.recv + off, len);
                        });
          break;
        case kBroadcast:
          error = round([&] { if (c.rank == op.root) std::memcpy(c.slot(op.root), op.send + off, bytes); },
                        [&] { std::memcpy(op.recv + off, c.slot(op.root), bytes); });
          break;
        case kReduceScatter:
          error = round([&] { std::memcpy(c.slot(c.rank), op.send + b * op.count + off, bytes); },
                        [&] {
                          if (static_cast<size_t>(c.rank) == b) sum_into(op.recv + off, len);
                        });
          break;
        case kAllGather:
          error = round([&] { std::memcpy(c.slot(c.rank), op.send + off, bytes); },
                        [&] {
                          for (int q = 0; q < n; ++q)
                            std::memcpy(op.recv + static_cast<size_t>(q) * op.count + off, c.slot(q), bytes);
                        });
          break;
      }
      if (!error.empty()) return error;
    }
  }
  if (!rounds) return barrier(c, name);  // nobody rewrites its record before all have checked them
  return "";
}

void record_failure(ncclComm& c, ncclResult_t result, const std::string& message) {
  int expected = ncclSuccess;
  if (c.async_error.compare_exchange_strong(expected, result)) {
    std::fprintf(stderr, "nccl emulation: %s\n", message.c_str());
    std::fflush(stderr);
  }
  std::lock_guard<std::mutex> lock(c.mutex);
  if (c.last_error.empty()) c.last_error = message;
}

bool device_buffer(const void* p, size_t count, int device) {
  if (count == 0) return true;
  dj::emu::Allocation a;
  return dj::emu::find_allocation(p, count * sizeof(float), &a) && a.device == device;
}

ncclResult_t enqueue(ncclComm_t comm, Collective op, ncclDataType_t datatype, ncclRedOp_t reduction,
                     bool reduces, cudaStream_t stream) {
  const char* name = kind_name(op.kind);
  if (comm == nullptr) return fail(ncclInvalidArgument, strprintf("%s: null communicator", name));
  if (comm->aborted) return fail(ncclInvalidUsage, strprintf("%s: %s was aborted", name, comm->where().c_str()));
  if (datatype != ncclFloat) return fail(ncclInvalidArgument, strprintf("%s: only ncclFloat is modelled", name));
  if (reduces && reduction != ncclSum) return fail(ncclInvalidArgument, strprintf("%s: only ncclSum is modelled", name));
  if ((op.kind == kReduce || op.kind == kBroadcast) && (op.root < 0 || op.root >= comm->nranks))
    return fail(ncclInvalidArgument, strprintf("%s: root %d of %d ranks", name, op.root, comm->nranks));
  CUstream_st* s = dj::emu::resolve_stream(stream);
  if (s == nullptr) return fail(ncclInvalidArgument, strprintf("%s: not a live stream", name));
  if (s->device != comm->device)
    return fail(ncclInvalidArgument, strprintf("%s: %s got a stream of device %d", name, comm->where().c_str(),
                                               s->device));
  const size_t n = static_cast<size_t>(comm->nranks);
  size_t send = op.count, recv = op.count;
  bool need_send = true, need_recv = true;
  if (op.kind == kReduce) need_recv = comm->rank == op.root;
  if (op.kind == kBroadcast) need_send = comm->rank == op.root;
  if (op.kind == kReduceScatter) send = n * op.count;
  if (op.kind == kAllGather) recv = n * op.count;
  if ((need_send && !device_buffer(op.send, send, comm->device)) ||
      (need_recv && !device_buffer(op.recv, recv, comm->device)))
    return fail(ncclInvalidArgument,
                strprintf("%s: %s: a buffer is not %zu floats of device %d memory", name, comm->where().c_str(),
                          need_send && !device_buffer(op.send, send, comm->device) ? send : recv, comm->device));
  dj::emu::Device* device = dj::emu::device(comm->device);
  auto queued = std::make_unique<dj::emu::Op>();
  dj::emu::Op* self = queued.get();
  queued->what = name;
  queued->run = [comm, op, device, self] {
    if (comm->async_error.load() == ncclSuccess) {  // a failed communicator runs nothing more
      const std::string error = execute(*comm, op);
      if (error.empty()) return true;
      record_failure(*comm, error.find("mismatch") != std::string::npos ? ncclInvalidUsage : ncclSystemError,
                     error);
    }
    std::lock_guard<std::mutex> lock(comm->mutex);
    if (comm->aborted) return true;
    comm->stuck.emplace_back(device, self);  // blocks its stream until ncclCommAbort
    return false;
  };
  queued->on_complete = [comm] {
    std::lock_guard<std::mutex> lock(comm->mutex);
    --comm->pending;
    comm->idle.notify_all();
  };
  {
    std::lock_guard<std::mutex> lock(comm->mutex);
    ++comm->pending;
  }
  device->enqueue(s, std::move(queued));
  return ncclSuccess;
}

// Waits until no collective of `comm` is queued (false after the timeout).
bool wait_idle(ncclComm& c, double seconds) {
  std::unique_lock<std::mutex> lock(c.mutex);
  return c.idle.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return c.pending == 0; });
}

void release_stuck(ncclComm& c) {
  std::vector<std::pair<dj::emu::Device*, dj::emu::Op*>> stuck;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    c.aborted = true;
    stuck.swap(c.stuck);
  }
  for (auto& [device, op] : stuck) device->release(op);
}

void detach(ncclComm* c) {
  detach_segment(c->id);
  delete c;
}

}  // namespace

extern "C" {

ncclResult_t ncclGetVersion(int* version) {
  if (version == nullptr) return ncclInvalidArgument;
  *version = NCCL_VERSION_CODE;
  return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* uniqueId) {
  if (uniqueId == nullptr) return fail(ncclInvalidArgument, "ncclGetUniqueId: null id");
  const std::string error = create_segment(uniqueId);
  return error.empty() ? ncclSuccess : fail(ncclSystemError, "ncclGetUniqueId: " + error);
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank) {
  if (comm == nullptr) return fail(ncclInvalidArgument, "ncclCommInitRank: null communicator pointer");
  *comm = nullptr;
  if (nranks < 1 || nranks > kMaxRanks || rank < 0 || rank >= nranks)
    return fail(ncclInvalidArgument, strprintf("ncclCommInitRank: rank %d of %d (1..%d ranks)", rank, nranks, kMaxRanks));
  int device_index = 0;
  if (cudaGetDevice(&device_index) != cudaSuccess || dj::emu::device(device_index) == nullptr)
    return fail(ncclUnhandledCudaError, "ncclCommInitRank: no current device");
  Segment segment;
  if (const std::string why = attach_segment(commId, &segment); !why.empty())
    return fail(why.rfind("not a unique id", 0) == 0 ? ncclInvalidArgument : ncclSystemError,
                "ncclCommInitRank: " + why);
  auto* c = new ncclComm();
  c->id = segment.key;
  c->header = segment.header;
  c->slots = segment.slots;
  c->rank = rank;
  c->nranks = nranks;
  c->device = device_index;
  Header* h = c->header;
  std::string error;
  ncclResult_t result = ncclSuccess;
  lock(h);
  if (h->magic != kHeaderMagic) {
    result = ncclInvalidArgument;
    error = "ncclCommInitRank: the unique id's segment is not initialised";
  } else if (h->nranks != 0 && h->nranks != nranks) {
    result = ncclInvalidUsage;
    error = strprintf("ncclCommInitRank: rank %d says %d ranks, another rank said %d", rank, nranks, h->nranks);
  } else if (h->ranks[rank].present) {
    result = ncclInvalidUsage;
    error = strprintf("ncclCommInitRank: rank %d joined twice", rank);
  } else {
    h->nranks = nranks;
    h->ranks[rank] = RankRecord{1, static_cast<int>(getpid()), device_index, -1, -1, 0};
    ++h->joined;
    pthread_cond_broadcast(&h->cond);
    const double timeout = dj::emu::config().nccl_timeout_s;
    const Waited w = wait_for(h, [&] { return h->joined == nranks; }, deadline_after(timeout));
    if (w != Waited::Done) {
      std::string missing;
      for (int q = 0; q < nranks; ++q)
        if (!h->ranks[q].present) missing += strprintf(" %d", q);
      result = ncclSystemError;
      error = w == Waited::Timeout
                  ? strprintf("ncclCommInitRank: %s waited %g s for ranks%s (DIJIANG_EMU_NCCL_TIMEOUT_S)",
                              c->where().c_str(), timeout, missing.c_str())
                  : strprintf("ncclCommInitRank: %s: a peer failed", c->where().c_str());
      h->failed = 1;
      pthread_cond_broadcast(&h->cond);
    } else {
      for (int a = 0; a < nranks && error.empty(); ++a)
        for (int b = a + 1; b < nranks; ++b)
          if (h->ranks[a].pid == h->ranks[b].pid && h->ranks[a].device == h->ranks[b].device) {
            result = ncclInvalidUsage;
            error = strprintf("ncclCommInitRank: ranks %d and %d use the same device %d of process %d", a, b,
                              h->ranks[a].device, h->ranks[a].pid);
            break;
          }
    }
  }
  unlock(h);
  if (result == ncclSuccess) segment_complete(c->id);  // every rank holds the segment
  if (result != ncclSuccess) {
    detach(c);
    return fail(result, error);
  }
  *comm = c;
  return ncclSuccess;
}

ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  if (comm == nullptr) return fail(ncclInvalidArgument, "ncclCommFinalize: null communicator");
  if (comm->async_error.load() != ncclSuccess) return static_cast<ncclResult_t>(comm->async_error.load());
  if (!wait_idle(*comm, dj::emu::config().nccl_timeout_s))
    return fail(ncclSystemError, strprintf("ncclCommFinalize: %s: collectives still queued after %g s",
                                           comm->where().c_str(), dj::emu::config().nccl_timeout_s));
  return static_cast<ncclResult_t>(comm->async_error.load());
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return fail(ncclInvalidArgument, "ncclCommDestroy: null communicator");
  if (comm->async_error.load() != ncclSuccess) release_stuck(*comm);
  wait_idle(*comm, dj::emu::config().nccl_timeout_s);
  release_stuck(*comm);
  if (!wait_idle(*comm, dj::emu::config().nccl_timeout_s))
    return fail(ncclSystemError, strprintf("ncclCommDestroy: %s: a collective did not end", comm->where().c_str()));
  detach(comm);
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  Header* h = comm->header;
  lock(h);
  h->failed = 1;  // the peers stop waiting for this rank
  pthread_cond_broadcast(&h->cond);
  unlock(h);
  release_stuck(*comm);
  if (!wait_idle(*comm, dj::emu::config().nccl_timeout_s))
    return fail(ncclSystemError, strprintf("ncclCommAbort: %s: a collective did not end", comm->where().c_str()));
  detach(comm);
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* asyncError) {
  if (comm == nullptr || asyncError == nullptr) return ncclInvalidArgument;
  *asyncError = static_cast<ncclResult_t>(comm->async_error.load());
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
    case ncclSystemError: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
    case ncclInternalError: return "internal error - please report this issue to the NCCL developers";
    case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
  }
}

const char* ncclGetLastError(ncclComm_t comm) {
  if (comm != nullptr) {
    std::lock_guard<std::mutex> lock(comm->mutex);
    if (!comm->last_error.empty()) {
      t_last_error = comm->last_error;
      return t_last_error.c_str();
    }
  }
  return t_last_error.c_str();
}

ncclResult_t ncclGroupStart(void) {
  ++t_group_depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd(void) {
  if (t_group_depth == 0) return fail(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
  --t_group_depth;
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  return enqueue(comm, Collective{kAllReduce, static_cast<const float*>(sendbuff), static_cast<float*>(recvbuff), count, 0},
                 datatype, op, true, stream);
}

ncclResult_t ncclReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op,
                        int root, ncclComm_t comm, cudaStream_t stream) {
  return enqueue(comm, Collective{kReduce, static_cast<const float*>(sendbuff), static_cast<float*>(recvbuff), count, root},
                 datatype, op, true, stream);
}

ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, int root,
                           ncclComm_t comm, cudaStream_t stream) {
  return enqueue(comm, Collective{kBroadcast, static_cast<const float*>(sendbuff), static_cast<float*>(recvbuff), count, root},
                 datatype, ncclSum, false, stream);
}

ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount, ncclDataType_t datatype,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  return enqueue(comm,
                 Collective{kReduceScatter, static_cast<const float*>(sendbuff), static_cast<float*>(recvbuff), recvcount, 0},
                 datatype, op, true, stream);
}

ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream) {
  return enqueue(comm,
                 Collective{kAllGather, static_cast<const float*>(sendbuff), static_cast<float*>(recvbuff), sendcount, 0},
                 datatype, ncclSum, false, stream);
}

}  // extern "C"

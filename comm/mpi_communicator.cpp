#include "comm/mpi_communicator.h"
#if DIJIANG_HAVE_MPI

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "kernels/core/error.h"

namespace dj::comm {

namespace {

constexpr int kEndTag = 1;  // the end announcements (see abort)

void check(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS)
    fail("{} failed with MPI error {}", call, code);
  fail("{} failed: {}", call, std::string(text, static_cast<size_t>(length)));
}

// One operation, possibly several MPI requests. The count and displacement arrays of the "v"
// collectives live here because MPI may read them until the operation completes. A request dropped
// unfinished stays with MPI (nonblocking collectives cannot be cancelled or freed); that only
// happens on error paths that end the job.
class MpiRequest final : public Request {
 public:
  bool test() override {
    int done = 0;
    check(
        MPI_Testall(static_cast<int>(requests.size()), requests.data(), &done, MPI_STATUSES_IGNORE),
        "MPI_Testall");
    return done != 0;
  }

  std::vector<MPI_Request> requests;
  std::vector<int> counts, displacements;
  std::vector<std::vector<int>> window_counts;  // a chunked reduce_scatter's per-call counts
};

int64_t checked_count(const char* operation, const char* what, int64_t value) {
  if (value < 0) fail("{}: negative {} {}", operation, what, value);
  if (value > INT_MAX)
    fail("{}: {} {} exceeds what one MPI call takes ({} values)", operation, what, value, INT_MAX);
  return value;
}

// Per-rank counts and their offsets as MPI's ints. Returns the total.
int64_t fill_counts(const char* operation, std::span<const int64_t> counts, int size,
                    MpiRequest& request, bool with_displacements) {
  if (counts.size() != static_cast<size_t>(size))
    fail("{}: {} counts given for {} ranks", operation, counts.size(), size);
  int64_t total = 0;
  for (const int64_t count : counts) {
    request.counts.push_back(static_cast<int>(checked_count(operation, "count", count)));
    if (with_displacements)
      request.displacements.push_back(static_cast<int>(checked_count(operation, "offset", total)));
    total += count;
  }
  return total;
}

}  // namespace

MpiCommunicator::MpiCommunicator(int64_t max_chunk) : max_chunk_(max_chunk) {
  if (max_chunk_ < 1 || max_chunk_ > INT_MAX) fail("all_reduce chunks of {} values: not a valid MPI count", max_chunk_);
  int initialised = 0;
  MPI_Initialized(&initialised);
  if (!initialised) {
    // Open MPI loads the machine's topology with hwloc in MPI_Init (mpirun does too, see
    // launch/mpirun.sh). hwloc's GL plugin then opens X displays :0 to :9, and each attempt looks
    // up "localhost"; where /etc/hosts does not name it (a system made by debootstrap), each
    // lookup goes to DNS, and one lost reply stalls the start by the resolver's 5 s timeout. The
    // plugin only finds GPUs behind an X server, which nothing here uses. A value set by the user
    // wins.
    setenv("HWLOC_COMPONENTS", "-gl", 0);
    // FUNNELED: OpenMP threads compute, only the main thread calls MPI.
    int provided = 0;
    check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    finalize_ = true;
  }
  check(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  check(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), "MPI_Comm_dup");  // inherits the error handler
  check(MPI_Comm_dup(MPI_COMM_WORLD, &end_comm_), "MPI_Comm_dup");
  check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
  check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  announced_.assign(static_cast<size_t>(size_), 0);
  post_end_receive();
  char name[MPI_MAX_PROCESSOR_NAME] = {};
  int length = 0;
  check(MPI_Get_processor_name(name, &length), "MPI_Get_processor_name");
  host_.assign(name, static_cast<size_t>(length));
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  if (end_receive_ != MPI_REQUEST_NULL) {
    MPI_Cancel(&end_receive_);
    MPI_Wait(&end_receive_, MPI_STATUS_IGNORE);
  }
  MPI_Comm_free(&end_comm_);
  MPI_Comm_free(&comm_);
  if (finalize_) MPI_Finalize();
}

std::unique_ptr<Request> MpiCommunicator::all_reduce_async(float* data, int64_t count) {
  if (count < 0) fail("all_reduce: negative count {}", count);
  auto request = std::make_unique<MpiRequest>();
  request->requests.reserve(static_cast<size_t>((count + max_chunk_ - 1) / max_chunk_));
  for (int64_t offset = 0; offset < count; offset += max_chunk_) {
    const auto chunk = static_cast<int>(std::min(max_chunk_, count - offset));
    check(MPI_Iallreduce(MPI_IN_PLACE, data + offset, chunk, MPI_FLOAT, MPI_SUM, comm_,
                         &request->requests.emplace_back(MPI_REQUEST_NULL)),
          "MPI_Iallreduce");
  }
  traffic_.all_reduce += count * static_cast<int64_t>(sizeof(float));
  return request;
}

std::unique_ptr<Request> MpiCommunicator::reduce_scatter_async(const float* send, float* recv,
                                                               std::span<const int64_t> counts) {
  auto request = std::make_unique<MpiRequest>();
  const int64_t total = fill_counts("reduce_scatter", counts, size_, *request, false);
  if (send == recv || total <= max_chunk_) {
    // In place, MPI takes the input from `recv` and leaves this rank's block at its start: the
    // result asked for, without the overlap MPI forbids.
    const void* source = send == recv ? MPI_IN_PLACE : send;
    check(MPI_Ireduce_scatter(source, recv, request->counts.data(), MPI_FLOAT, MPI_SUM, comm_,
                              &request->requests.emplace_back(MPI_REQUEST_NULL)),
          "MPI_Ireduce_scatter");
  } else {
    // Windows of the flat send buffer: the blocks lie in rank order, so each window is a smaller
    // reduce-scatter whose counts are the owners' parts inside it (zero for the others).
    std::vector<int64_t> start(static_cast<size_t>(size_) + 1, 0);
    for (int r = 0; r < size_; ++r) start[static_cast<size_t>(r) + 1] = start[static_cast<size_t>(r)] + counts[static_cast<size_t>(r)];
    const int64_t own_begin = start[static_cast<size_t>(rank_)], own_end = start[static_cast<size_t>(rank_) + 1];
    for (int64_t w0 = 0; w0 < total; w0 += max_chunk_) {
      const int64_t w1 = std::min(total, w0 + max_chunk_);
      std::vector<int>& window = request->window_counts.emplace_back(static_cast<size_t>(size_), 0);
      for (int r = 0; r < size_; ++r)
        window[static_cast<size_t>(r)] = static_cast<int>(std::max<int64_t>(
            0, std::min(w1, start[static_cast<size_t>(r) + 1]) - std::max(w0, start[static_cast<size_t>(r)])));
      float* target = recv + std::clamp(w0, own_begin, own_end) - own_begin;
      check(MPI_Ireduce_scatter(send + w0, target, window.data(), MPI_FLOAT, MPI_SUM, comm_,
                                &request->requests.emplace_back(MPI_REQUEST_NULL)),
            "MPI_Ireduce_scatter");
    }
  }
  traffic_.reduce_scatter += total * static_cast<int64_t>(sizeof(float));
  return request;
}

std::unique_ptr<Request> MpiCommunicator::all_gather_async(const float* send, float* recv,
                                                           std::span<const int64_t> counts) {
  auto request = std::make_unique<MpiRequest>();
  fill_counts("all_gather", counts, size_, *request, true);
  const int own = request->counts[static_cast<size_t>(rank_)];
  // MPI forbids overlapping send and receive buffers; this rank's block inside `recv` is in place.
  const void* source =
      send == recv + request->displacements[static_cast<size_t>(rank_)] ? MPI_IN_PLACE : send;
  check(MPI_Iallgatherv(source, own, MPI_FLOAT, recv, request->counts.data(),
                        request->displacements.data(), MPI_FLOAT, comm_,
                        &request->requests.emplace_back(MPI_REQUEST_NULL)),
        "MPI_Iallgatherv");
  traffic_.all_gather += own * static_cast<int64_t>(sizeof(float));
  return request;
}

void MpiCommunicator::all_reduce_host(double* data, int64_t count) {
  MpiRequest request;
  check(MPI_Iallreduce(
            MPI_IN_PLACE, data, static_cast<int>(checked_count("all_reduce_host", "count", count)),
            MPI_DOUBLE, MPI_SUM, comm_, &request.requests.emplace_back(MPI_REQUEST_NULL)),
        "MPI_Iallreduce");
  wait(request, "all_reduce_host");
  traffic_.all_reduce += count * static_cast<int64_t>(sizeof(double));
}

void MpiCommunicator::broadcast_host(void* data, int64_t bytes, int root) {
  if (root < 0 || root >= size_) fail("broadcast_host: root {} is not a rank of {}", root, size_);
  MpiRequest request;
  check(MPI_Ibcast(data, static_cast<int>(checked_count("broadcast_host", "byte count", bytes)),
                   MPI_BYTE, root, comm_, &request.requests.emplace_back(MPI_REQUEST_NULL)),
        "MPI_Ibcast");
  wait(request, "broadcast_host");
  traffic_.broadcast += bytes;
}

void MpiCommunicator::barrier() {
  MpiRequest request;
  check(MPI_Ibarrier(comm_, &request.requests.emplace_back(MPI_REQUEST_NULL)), "MPI_Ibarrier");
  wait(request, "barrier");
}

void MpiCommunicator::post_end_receive() noexcept {
  if (MPI_Irecv(&end_notice_, 1, MPI_INT, MPI_ANY_SOURCE, kEndTag, end_comm_, &end_receive_) !=
      MPI_SUCCESS)
    end_receive_ = MPI_REQUEST_NULL;
}

void MpiCommunicator::receive_end_notices() noexcept {
  while (end_receive_ != MPI_REQUEST_NULL) {
    int done = 0;
    MPI_Status status;
    if (MPI_Test(&end_receive_, &done, &status) != MPI_SUCCESS || !done) return;
    const int peer = status.MPI_SOURCE, starter = end_notice_;
    if (peer >= 0 && peer < size_ && starter >= 0 && starter < size_) {
      announced_[static_cast<size_t>(peer)] = 1;
      if (first_starter_ < 0) first_starter_ = starter;
      if (lowest_starter_ < 0 || starter < lowest_starter_) lowest_starter_ = starter;
    }
    post_end_receive();
  }
}

int MpiCommunicator::ending_peer() {
  receive_end_notices();
  return first_starter_;
}

// The agreed end, then the forced one. The announcements are sent without waiting for them to
// arrive (a peer that is stopped or dead never takes them up); the peers waiting in a collective
// answer within a poll, so the grace period runs out only when some rank does not answer: the
// one that is stuck, stopped or dead. MPI_Abort then asks the launcher to end the job: Open MPI's
// mpirun sends every rank still alive SIGCONT, a second later SIGTERM, a second later SIGKILL, so
// a stopped or sleeping rank ends too. Errors are ignored here: the job ends either way.
void MpiCommunicator::abort(int code) {
  std::fflush(nullptr);
  if (end_comm_ != MPI_COMM_NULL && size_ > 1) {
    receive_end_notices();
    // This rank takes up the end another started, or starts it.
    const int starter = first_starter_ >= 0 ? first_starter_ : rank_;
    if (lowest_starter_ < 0 || starter < lowest_starter_) lowest_starter_ = starter;
    announced_[static_cast<size_t>(rank_)] = 1;
    int payload = starter;
    std::vector<MPI_Request> sends;
    for (int peer = 0; peer < size_; ++peer)
      if (peer != rank_ && MPI_Isend(&payload, 1, MPI_INT, peer, kEndTag, end_comm_,
                                     &sends.emplace_back(MPI_REQUEST_NULL)) != MPI_SUCCESS)
        sends.back() = MPI_REQUEST_NULL;
    using Clock = std::chrono::steady_clock;
    const Clock::time_point deadline =
        Clock::now() + std::chrono::duration_cast<Clock::duration>(
                           std::chrono::duration<double>(kEndGraceSeconds));
    while (Clock::now() < deadline) {
      receive_end_notices();
      if (std::all_of(announced_.begin(), announced_.end(), [](char a) { return a != 0; })) break;
      int done = 0;
      MPI_Testall(static_cast<int>(sends.size()), sends.data(), &done, MPI_STATUSES_IGNORE);
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    // One rank forces the end, the lowest that started it, so that the launcher's report names
    // it once. The others wait for the launcher to end them, and force the end themselves only if
    // that does not come.
    if (lowest_starter_ != rank_)
      std::this_thread::sleep_for(std::chrono::duration<double>(kEndGraceSeconds));
  }
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);  // MPI_Abort does not return in practice; the signature promises it
}

}  // namespace dj::comm
#endif

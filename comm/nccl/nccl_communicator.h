// NCCL backend of the communicator: collectives on DEVICE buffers, one rank per GPU. The host
// communicator (single or MPI) bootstraps it (rank 0's unique id is broadcast over it) and keeps
// serving the small host-side operations (all_reduce_host, broadcast_host, barrier) and abort.
//
// Stream ordering, what the caller can rely on:
//   * Every collective runs on this communicator's own CUDA stream (non-blocking with respect to
//     the legacy default stream), in the order the *_async calls were made.
//   * Before enqueueing a collective, the communicator records an event on the COMPUTE stream
//     (set at construction or with set_compute_stream) and makes its own stream wait for it. So a
//     collective sees every result the caller enqueued on the compute stream before the call; the
//     host is never blocked by this. Work on any other stream must be ordered by the caller (for
//     instance by finishing it, or by making the compute stream wait for it) before the call.
//   * Request::test() (and Communicator::wait) reports completion of the collective itself: once
//     it returns true the buffers may be read or reused from any stream or the host.
//   * To consume a result on the GPU without blocking the host, call order_after(request) (the
//     compute stream waits for that collective) or stream_wait_for_collectives(stream) (that
//     stream waits for every collective started so far).
//   * The compute stream must not write a buffer that an unfinished collective reads or writes.
//
// Counts are the same on every rank. Uneven reduce_scatter runs as one NCCL group of ncclReduce
// calls (one per owner), uneven all_gather as one group of ncclBroadcast calls (one per owner);
// equal counts use ncclReduceScatter / ncclAllGather. Blocks of zero values are skipped.
//
// Errors from CUDA or NCCL become dj::Error naming the call, this rank and the error string; an
// asynchronous NCCL error (a peer failed, a network error) is reported by the next
// Request::test() of this communicator. One thread drives a communicator at a time; each
// operation makes this communicator's device the thread's current device.
//
// This header includes comm/communicator.h and with it fmt: include it from C++ sources, not
// from CUDA ones (fmt 9 does not compile under nvcc in C++20).
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "comm/communicator.h"

// The CUDA runtime's and NCCL's handle types, declared here so that this header needs neither
// cuda_runtime.h nor nccl.h (cudaStream_t is CUstream_st*, cudaEvent_t is CUevent_st*,
// ncclComm_t is ncclComm*).
struct CUstream_st;
struct CUevent_st;
struct ncclComm;

namespace dj::comm {

namespace detail {
struct NcclEventPool;
}

class NcclCommunicator final : public Communicator {
 public:
  // Sets `device` as this thread's current device, shares rank 0's NCCL unique id over `host`
  // and joins the NCCL communicator of host.size() ranks (collective over `host`). `host` must
  // outlive this object. `compute_stream` is the stream whose work every collective waits for
  // (nullptr: the legacy default stream).
  NcclCommunicator(Communicator& host, int device, CUstream_st* compute_stream = nullptr);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }
  std::string host() const override { return host_.host(); }

  std::unique_ptr<Request> all_reduce_async(float* data, int64_t count) override;
  std::unique_ptr<Request> reduce_scatter_async(const float* send, float* recv,
                                                std::span<const int64_t> counts) override;
  std::unique_ptr<Request> all_gather_async(const float* send, float* recv,
                                            std::span<const int64_t> counts) override;

  // Host-side helpers go through the host communicator (broadcast bytes are counted here too).
  void all_reduce_host(double* data, int64_t count) override;
  void broadcast_host(void* data, int64_t bytes, int root) override;
  void barrier() override;

  // Makes the compute stream wait, on the device, for `request` (a request of this communicator).
  void order_after(Request& request, const char* what) override;

  // ncclCommAbort, then the host communicator's abort (which ends every rank).
  [[noreturn]] void abort(int code) override;
  // Announcements travel over the host communicator.
  int ending_peer() override { return host_.ending_peer(); }

  int device() const { return device_; }
  // The stream the collectives run on.
  CUstream_st* stream() const { return stream_; }
  // The stream every later collective waits for (see the ordering notes above).
  void set_compute_stream(CUstream_st* compute_stream) { compute_ = compute_stream; }
  CUstream_st* compute_stream() const { return compute_; }
  // Makes `stream` wait, on the device, for every collective started so far. Never blocks.
  void stream_wait_for_collectives(CUstream_st* stream);

  // For checks only: run reduce_scatter / all_gather through the grouped per-owner path even
  // when all counts are equal (so that one rank exercises it too).
  void set_force_grouped(bool force) { force_grouped_ = force; }

 private:
  void prepare_op(const char* op);            // current device, then wait for the compute stream
  std::unique_ptr<Request> finish_op(const char* op);  // records the completion event
  void check_counts(std::span<const int64_t> counts, const char* op) const;
  void release() noexcept;

  Communicator& host_;
  int device_ = 0;
  int rank_ = 0;
  int size_ = 1;
  bool force_grouped_ = false;
  ncclComm* comm_ = nullptr;
  CUstream_st* stream_ = nullptr;
  CUstream_st* compute_ = nullptr;
  CUevent_st* compute_ready_ = nullptr;  // recorded on the compute stream before each op
  CUevent_st* comm_done_ = nullptr;      // recorded on our stream by stream_wait_for_collectives
  std::shared_ptr<detail::NcclEventPool> events_;  // completion events, shared with requests
};

// Makes the NCCL communicator of this job over `host` (see NcclCommunicator's constructor).
// With the single-process host communicator this is one rank and needs no MPI.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& host, int device,
                                                     CUstream_st* compute_stream = nullptr);

}  // namespace dj::comm

// The emulation's NCCL: collectives across two ranks that are threads of this process (two
// emulated devices) and across two processes (fork), with sums in rank order, and the timeout
// when a peer never arrives (DIJIANG_EMU_NCCL_TIMEOUT_S=2 for this test program: environment.cpp).
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <nccl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <thread>
#include <vector>

#include "support.h"

namespace {

// Value i of rank r: chosen so that a sum in another order would round differently.
float value(int rank, size_t i) { return (rank == 0 ? 1.0f : 1e-8f) * static_cast<float>(1 + i % 13); }

// Runs every collective on `comm` (this rank's current device) and returns "" or the first wrong value.
std::string collectives(ncclComm_t comm, int rank, int nranks) {
  const size_t count = 70001;  // several chunks
  std::vector<float> host(count * static_cast<size_t>(nranks));
  for (size_t i = 0; i < host.size(); ++i) host[i] = value(rank, i);
  float *send = nullptr, *recv = nullptr;
  dj::emu::test::ok(cudaMalloc(reinterpret_cast<void**>(&send), host.size() * sizeof(float)), "cudaMalloc");
  dj::emu::test::ok(cudaMalloc(reinterpret_cast<void**>(&recv), host.size() * sizeof(float)), "cudaMalloc");
  dj::emu::test::ok(cudaMemcpy(send, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice), "upload");
  cudaStream_t s = nullptr;
  dj::emu::test::ok(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream");
  std::vector<float> got(host.size());
  auto download = [&](size_t n) {
    dj::emu::test::ok(cudaStreamSynchronize(s), "sync");
    dj::emu::test::ok(cudaMemcpy(got.data(), recv, n * sizeof(float), cudaMemcpyDeviceToHost), "download");
  };
  auto sum = [&](size_t i) {
    float acc = value(0, i);
    for (int q = 1; q < nranks; ++q) acc += value(q, i);
    return acc;
  };
  std::string error;
  auto expect = [&](const char* what, size_t n, const std::function<float(size_t)>& want) {
    for (size_t i = 0; i < n && error.empty(); ++i)
      if (got[i] != want(i)) error = std::string(what) + " value " + std::to_string(i);
  };
  if (ncclAllReduce(send, recv, count, ncclFloat, ncclSum, comm, s) != ncclSuccess) return "ncclAllReduce";
  download(count);
  expect("all_reduce", count, sum);
  if (ncclReduceScatter(send, recv, count, ncclFloat, ncclSum, comm, s) != ncclSuccess) return "ncclReduceScatter";
  download(count);
  expect("reduce_scatter", count, [&](size_t i) { return sum(static_cast<size_t>(rank) * count + i); });
  if (ncclAllGather(send, recv, count, ncclFloat, comm, s) != ncclSuccess) return "ncclAllGather";
  download(count * static_cast<size_t>(nranks));
  expect("all_gather", count * static_cast<size_t>(nranks), [&](size_t i) { return value(static_cast<int>(i / count), i % count); });
  if (ncclBroadcast(send, recv, count, ncclFloat, 1, comm, s) != ncclSuccess) return "ncclBroadcast";
  download(count);
  expect("broadcast", count, [&](size_t i) { return value(1, i); });
  dj::emu::test::ok(cudaMemset(recv, 0, count * sizeof(float)), "memset");
  if (ncclGroupStart() != ncclSuccess || ncclReduce(send, recv, count, ncclFloat, ncclSum, 0, comm, s) != ncclSuccess ||
      ncclGroupEnd() != ncclSuccess)
    return "ncclReduce";
  download(count);
  expect("reduce", count, [&](size_t i) { return rank == 0 ? sum(i) : 0.0f; });
  ncclResult_t async = ncclInternalError;
  if (ncclCommGetAsyncError(comm, &async) != ncclSuccess || async != ncclSuccess) return "async error";
  cudaStreamDestroy(s);
  cudaFree(send);
  cudaFree(recv);
  return error;
}

TEST(Nccl, CollectivesAcrossTwoThreads) {
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  std::string errors[2];
  std::vector<std::thread> ranks;
  for (int rank = 0; rank < 2; ++rank)
    ranks.emplace_back([&, rank] {
      cudaSetDevice(rank);
      ncclComm_t comm = nullptr;
      if (ncclCommInitRank(&comm, 2, id, rank) != ncclSuccess) {
        errors[rank] = std::string("init: ") + ncclGetLastError(nullptr);
        return;
      }
      errors[rank] = collectives(comm, rank, 2);
      if (ncclCommFinalize(comm) != ncclSuccess || ncclCommDestroy(comm) != ncclSuccess) errors[rank] += " teardown";
    });
  for (auto& t : ranks) t.join();
  EXPECT_EQ(errors[0], "");
  EXPECT_EQ(errors[1], "");
}

TEST(Nccl, TwoRanksOnOneDeviceOfOneProcessAreRefused) {
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  ncclResult_t results[2];
  std::vector<std::thread> ranks;
  for (int rank = 0; rank < 2; ++rank)
    ranks.emplace_back([&, rank] {
      cudaSetDevice(0);
      ncclComm_t comm = nullptr;
      results[rank] = ncclCommInitRank(&comm, 2, id, rank);
    });
  for (auto& t : ranks) t.join();
  EXPECT_EQ(results[0], ncclInvalidUsage);
  EXPECT_EQ(results[1], ncclInvalidUsage);
}

// Forks a rank that runs `body` and exits with its status (0: passed).
pid_t fork_rank(const std::function<int()>& body) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) _exit(body());
  return pid;
}

int exit_status(pid_t pid) {
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TEST(Nccl, CollectivesAcrossTwoProcesses) {
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  pid_t pids[2];
  for (int rank = 0; rank < 2; ++rank)
    pids[rank] = fork_rank([&, rank] {
      ncclComm_t comm = nullptr;
      if (ncclCommInitRank(&comm, 2, id, rank) != ncclSuccess) {
        std::fprintf(stderr, "rank %d: %s\n", rank, ncclGetLastError(nullptr));
        return 2;
      }
      const std::string error = collectives(comm, rank, 2);
      if (!error.empty()) std::fprintf(stderr, "rank %d: %s\n", rank, error.c_str());
      return error.empty() && ncclCommFinalize(comm) == ncclSuccess && ncclCommDestroy(comm) == ncclSuccess ? 0 : 1;
    });
  EXPECT_EQ(exit_status(pids[0]), 0);
  EXPECT_EQ(exit_status(pids[1]), 0);
}

TEST(Nccl, InitTimesOutWhenAPeerNeverArrives) {
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  const pid_t pid = fork_rank([&] {
    ncclComm_t comm = nullptr;
    const auto start = std::chrono::steady_clock::now();
    const ncclResult_t result = ncclCommInitRank(&comm, 2, id, 0);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return result == ncclSystemError && seconds >= 1.5 && seconds < 30 ? 0 : 1;
  });
  EXPECT_EQ(exit_status(pid), 0);
}

TEST(Nccl, CollectiveTimesOutWhenAPeerNeverCallsIt) {
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  const pid_t quitter = fork_rank([&] {
    ncclComm_t comm = nullptr;
    if (ncclCommInitRank(&comm, 2, id, 1) != ncclSuccess) return 2;
    return 0;  // leaves without ever calling the collective
  });
  const pid_t waiter = fork_rank([&] {
    ncclComm_t comm = nullptr;
    if (ncclCommInitRank(&comm, 2, id, 0) != ncclSuccess) return 2;
    float* data = nullptr;
    if (cudaMalloc(reinterpret_cast<void**>(&data), 1024 * sizeof(float)) != cudaSuccess) return 3;
    cudaStream_t s = nullptr;
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    if (ncclAllReduce(data, data, 1024, ncclFloat, ncclSum, comm, s) != ncclSuccess) return 4;
    // As with a hung NCCL kernel: the stream does not finish; the error shows asynchronously.
    ncclResult_t async = ncclSuccess;
    for (int i = 0; i < 3000 && async == ncclSuccess; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      if (ncclCommGetAsyncError(comm, &async) != ncclSuccess) return 5;
    }
    if (async != ncclSystemError) return 6;
    if (cudaStreamQuery(s) != cudaErrorNotReady) return 7;
    if (ncclCommAbort(comm) != ncclSuccess) return 8;
    if (cudaStreamSynchronize(s) != cudaSuccess) return 9;  // abort released the stream
    return 0;
  });
  EXPECT_EQ(exit_status(quitter), 0);
  EXPECT_EQ(exit_status(waiter), 0);
}

}  // namespace

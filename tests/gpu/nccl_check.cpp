// Device check of the NCCL communicator (needs a GPU; built by tests/gpu/CMakeLists.txt). Host
// code only: it enqueues no kernels of its own.
//
// One rank always: the single-process host communicator bootstraps a one-rank NCCL communicator
// on device 0. With more GPUs, the same checks run again over all of them, one thread per rank
// (a small in-process host communicator shares the unique id between the threads).
//
// Inputs are fresh random multiples of 1/256 in [-1000/256, 1000/256], so sums over ranks are
// exact in float32 in any order and every device result is compared bit for bit with the one
// computed on the host. Every output (and a guard region after it) is poisoned with NaN before
// each run; inputs reach the device by asynchronous copies on the compute stream with no
// synchronisation before the collective, which checks the communicator's stream ordering.
//
// Usage: nccl_check [--seed N] [--max-ranks N]. Exit status 0 when every check passed, 1 when
// one failed, 2 when no CUDA device can be used.
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "comm/nccl/nccl_communicator.h"
#include "nccl_check_support.h"
#include "thread_communicator.h"

namespace {

using dj::comm::Communicator;
using dj::comm::NcclCommunicator;
using dj::comm::Request;
using dj::gpucheck::ThreadGroup;
using dj::gpucheck::ThreadHostCommunicator;

using namespace dj::gpucheck::nccl;

// ---- count sets -----------------------------------------------------------------------------

struct CountSet {
  const char* name;
  std::vector<int64_t> counts;
};

// Uneven ones with zero blocks, equal ones, all zero; one rank gets {N}, {0}, ...
std::vector<CountSet> count_sets(int n) {
  auto make = [n](auto&& f) {
    std::vector<int64_t> counts(static_cast<size_t>(n));
    for (int r = 0; r < n; ++r) counts[static_cast<size_t>(r)] = f(r);
    return counts;
  };
  return {
      {"uneven", make([](int r) -> int64_t { return r % 3 == 1 ? 0 : 100003 + 4099 * r; })},
      {"equal", make([](int) -> int64_t { return 65537; })},
      {"zero", make([](int) -> int64_t { return 0; })},
      {"last-only", make([n](int r) -> int64_t { return r == n - 1 ? 7 : 0; })},
      {"small", make([](int r) -> int64_t { return 1 + r; })},
  };
}

std::vector<int64_t> offsets_of(std::span<const int64_t> counts) {
  std::vector<int64_t> offsets(counts.size() + 1, 0);
  for (size_t q = 0; q < counts.size(); ++q) offsets[q + 1] = offsets[q] + counts[q];
  return offsets;
}

// ---- single operations ----------------------------------------------------------------------

// One case: returns "" or the failure.
using Case = std::function<std::string(Rank&)>;

// Starts an all_reduce of `count` values; returns the buffer and request, expectation separately.
std::string all_reduce_case(Rank& r, int64_t count, uint64_t seed) {
  DeviceBuffer data(count + kGuard);
  r.poison(data.data(), count + kGuard);
  r.upload(data.data(), seed, r.rank(), 0, count);
  auto request = r.comm.all_reduce_async(data.data(), count);
  wait(r, *request, "all_reduce");
  std::vector<float> want(static_cast<size_t>(count), 0.0f);
  for (int q = 0; q < r.size(); ++q)
    for (int64_t i = 0; i < count; ++i) want[static_cast<size_t>(i)] += value(seed, q, i);
  return check_output(r, data.data(), want);
}

std::vector<float> reduce_scatter_want(const Rank& r, std::span<const int64_t> counts,
                                       uint64_t seed) {
  const std::vector<int64_t> offsets = offsets_of(counts);
  const auto own = static_cast<size_t>(r.rank());
  std::vector<float> want(static_cast<size_t>(counts[own]), 0.0f);
  for (int q = 0; q < r.size(); ++q)
    for (int64_t i = 0; i < counts[own]; ++i)
      want[static_cast<size_t>(i)] += value(seed, q, offsets[own] + i);
  return want;
}

std::string reduce_scatter_case(Rank& r, std::span<const int64_t> counts, uint64_t seed) {
  const std::vector<int64_t> offsets = offsets_of(counts);
  const int64_t total = offsets.back();
  const int64_t own = counts[static_cast<size_t>(r.rank())];
  DeviceBuffer send(total), recv(own + kGuard);
  r.upload(send.data(), seed, r.rank(), 0, total);
  r.poison(recv.data(), own + kGuard);
  auto request = r.comm.reduce_scatter_async(send.data(), recv.data(), counts);
  wait(r, *request, "reduce_scatter");
  return check_output(r, recv.data(), reduce_scatter_want(r, counts, seed));
}

std::vector<float> all_gather_want(const Rank& r, std::span<const int64_t> counts, uint64_t seed) {
  std::vector<float> want;
  for (int q = 0; q < r.size(); ++q)
    for (int64_t i = 0; i < counts[static_cast<size_t>(q)]; ++i) want.push_back(value(seed, q, i));
  return want;
}

// `aliased`: send is this rank's block inside recv.
std::string all_gather_case(Rank& r, std::span<const int64_t> counts, uint64_t seed, bool aliased) {
  const std::vector<int64_t> offsets = offsets_of(counts);
  const int64_t total = offsets.back();
  const auto own = static_cast<size_t>(r.rank());
  DeviceBuffer recv(total + kGuard), separate(aliased ? 0 : counts[own]);
  r.poison(recv.data(), total + kGuard);
  float* send = aliased ? recv.data() + offsets[own] : separate.data();
  r.upload(send, seed, r.rank(), 0, counts[own]);
  auto request = r.comm.all_gather_async(send, recv.data(), counts);
  wait(r, *request, "all_gather");
  return check_output(r, recv.data(), all_gather_want(r, counts, seed));
}

// Eight operations of the three kinds started before any is waited for, then checked.
std::string in_flight_case(Rank& r, uint64_t seed) {
  const int n = r.size();
  const auto own = static_cast<size_t>(r.rank());
  const std::vector<CountSet> sets = count_sets(n);
  const std::vector<int64_t>& uneven = sets[0].counts;
  const std::vector<int64_t>& small = sets[4].counts;

  struct Pending {
    std::string name;
    std::unique_ptr<DeviceBuffer> out, in;
    std::vector<float> want;
    std::unique_ptr<Request> request;
  };
  std::vector<Pending> pending;
  for (int k = 0; k < 4; ++k) {  // all_reduce of four sizes
    const int64_t count = (int64_t{1} << (14 + 2 * k)) + k;
    const uint64_t s = mix(seed + static_cast<uint64_t>(k));
    Pending p{strprintf("all_reduce #%d", k), std::make_unique<DeviceBuffer>(count + kGuard), {}, {}, {}};
    r.poison(p.out->data(), count + kGuard);
    r.upload(p.out->data(), s, r.rank(), 0, count);
    p.want.assign(static_cast<size_t>(count), 0.0f);
    for (int q = 0; q < n; ++q)
      for (int64_t i = 0; i < count; ++i) p.want[static_cast<size_t>(i)] += value(s, q, i);
    p.request = r.comm.all_reduce_async(p.out->data(), count);
    pending.push_back(std::move(p));
  }
  for (int k = 0; k < 2; ++k) {  // reduce_scatter, uneven and small
    const std::vector<int64_t>& counts = k == 0 ? uneven : small;
    const int64_t total = offsets_of(counts).back();
    const uint64_t s = mix(seed + 100 + static_cast<uint64_t>(k));
    Pending p{strprintf("reduce_scatter #%d", k), std::make_unique<DeviceBuffer>(counts[own] + kGuard),
              std::make_unique<DeviceBuffer>(total), {}, {}};
    r.poison(p.out->data(), counts[own] + kGuard);
    r.upload(p.in->data(), s, r.rank(), 0, total);
    p.want = reduce_scatter_want(r, counts, s);
    p.request = r.comm.reduce_scatter_async(p.in->data(), p.out->data(), counts);
    pending.push_back(std::move(p));
  }
  for (int k = 0; k < 2; ++k) {  // all_gather, uneven aliased and small separate
    const std::vector<int64_t>& counts = k == 0 ? uneven : small;
    const std::vector<int64_t> offsets = offsets_of(counts);
    const uint64_t s = mix(seed + 200 + static_cast<uint64_t>(k));
    Pending p{strprintf("all_gather #%d", k), std::make_unique<DeviceBuffer>(offsets.back() + kGuard),
              k == 0 ? nullptr : std::make_unique<DeviceBuffer>(counts[own]), {}, {}};
    r.poison(p.out->data(), offsets.back() + kGuard);
    float* send = k == 0 ? p.out->data() + offsets[own] : p.in->data();
    r.upload(send, s, r.rank(), 0, counts[own]);
    p.want = all_gather_want(r, counts, s);
    p.request = r.comm.all_gather_async(send, p.out->data(), counts);
    pending.push_back(std::move(p));
  }
  // Poll them all (none may throw), then wait in reverse order.
  for (auto& p : pending) (void)p.request->test();
  for (auto it = pending.rbegin(); it != pending.rend(); ++it) wait(r, *it->request, it->name.c_str());
  for (auto& p : pending) {
    if (!p.request->test()) return p.name + ": test() false after wait";
    const std::string error = check_output(r, p.out->data(), p.want);
    if (!error.empty()) return p.name + ": " + error;
  }
  return "";
}

std::string traffic_case(Rank& r, uint64_t seed) {
  const std::vector<int64_t> counts = count_sets(r.size())[0].counts;
  const int64_t total = offsets_of(counts).back();
  const int64_t own = counts[static_cast<size_t>(r.rank())];
  DeviceBuffer a(1000), send(total), recv(total);
  r.upload(a.data(), seed, r.rank(), 0, 1000);
  r.upload(send.data(), seed, r.rank(), 0, total);
  r.comm.reset_traffic();
  r.comm.all_reduce(a.data(), 1000, "all_reduce");
  r.comm.reduce_scatter(send.data(), recv.data(), counts, "reduce_scatter");
  r.comm.all_gather(recv.data(), send.data(), counts, "all_gather");
  uint64_t word = 42;
  r.comm.broadcast_host(&word, sizeof word, 0);
  r.download(a.data(), 0);
  const dj::comm::Traffic& t = r.comm.traffic();
  const int64_t f = sizeof(float);
  if (t.all_reduce != 1000 * f || t.reduce_scatter != total * f || t.all_gather != own * f ||
      t.broadcast != 8)
    return strprintf("traffic all_reduce %lld reduce_scatter %lld all_gather %lld broadcast %lld; "
                     "want %lld %lld %lld 8",
                     static_cast<long long>(t.all_reduce), static_cast<long long>(t.reduce_scatter),
                     static_cast<long long>(t.all_gather), static_cast<long long>(t.broadcast),
                     static_cast<long long>(1000 * f), static_cast<long long>(total * f),
                     static_cast<long long>(own * f));
  return "";
}

std::string host_helpers_case(Rank& r, uint64_t seed) {
  double sums[3] = {1.0, static_cast<double>(r.rank()), static_cast<double>(seed % 1000)};
  r.comm.all_reduce_host(sums, 3);
  const double n = r.size();
  if (sums[0] != n || sums[1] != n * (n - 1) / 2 || sums[2] != n * static_cast<double>(seed % 1000))
    return strprintf("all_reduce_host gave %g %g %g", sums[0], sums[1], sums[2]);
  uint64_t word = r.rank() == 0 ? seed : 0;
  r.comm.broadcast_host(&word, sizeof word, 0);
  if (word != seed) return "broadcast_host did not deliver rank 0's value";
  r.comm.barrier();
  if (r.comm.backend() != "nccl") return "backend() is " + r.comm.backend();
  return "";
}

std::string bad_counts_case(Rank& r, uint64_t) {
  DeviceBuffer buffer(16);
  std::vector<int64_t> wrong(static_cast<size_t>(r.size() + 1), 1);
  try {
    r.comm.reduce_scatter_async(buffer.data(), buffer.data(), wrong);
    return "reduce_scatter accepted size()+1 counts";
  } catch (const std::exception&) {
  }
  std::vector<int64_t> negative(static_cast<size_t>(r.size()), -1);
  try {
    r.comm.all_gather_async(buffer.data(), buffer.data(), negative);
    return "all_gather accepted negative counts";
  } catch (const std::exception&) {
  }
  return "";
}

// ---- one ZeRO step --------------------------------------------------------------------------

// An AdamW update of n values, the same code for the shard and for the whole (each value's
// arithmetic depends on nothing but its own inputs, so the two must agree bit for bit).
__attribute__((noinline)) void adamw(float* p, const float* g, float* m, float* v, int64_t n,
                                     int step, float grad_scale) {
  const float beta1 = 0.9f, beta2 = 0.999f, lr = 1e-3f, eps = 1e-8f, decay = 0.01f;
  const float correction1 = 1.0f - std::pow(beta1, static_cast<float>(step));
  const float correction2 = 1.0f - std::pow(beta2, static_cast<float>(step));
  for (int64_t i = 0; i < n; ++i) {
    const float grad = g[i] * grad_scale;
    m[i] = beta1 * m[i] + (1.0f - beta1) * grad;
    v[i] = beta2 * v[i] + (1.0f - beta2) * grad * grad;
    const float update = (m[i] / correction1) / (std::sqrt(v[i] / correction2) + eps);
    p[i] -= lr * (update + decay * p[i]);
  }
}

// Flat parameters and gradients on the device; each step reduce-scatters the gradients to the
// owned shard, updates the shard on the host and all-gathers the parameters in place. Three
// steps, so that the moments are not zero; compared with the whole update done on the host.
std::string zero_step_case(Rank& r, uint64_t seed) {
  const int n = r.size();
  const auto own = static_cast<size_t>(r.rank());
  const int64_t parameters = 1'000'003;
  std::vector<int64_t> counts(static_cast<size_t>(n));
  for (int q = 0; q < n; ++q)
    counts[static_cast<size_t>(q)] = parameters / n + (q < parameters % n ? 1 : 0);
  if (n > 1) {  // uneven shards
    const int64_t moved = counts[static_cast<size_t>(n - 1)] / 3;
    counts[0] += moved;
    counts[static_cast<size_t>(n - 1)] -= moved;
  }
  const std::vector<int64_t> offsets = offsets_of(counts);
  const float grad_scale = 1.0f / static_cast<float>(n);

  DeviceBuffer params(parameters + kGuard), grads(parameters), shard(counts[own]);
  r.poison(params.data(), parameters + kGuard);
  r.upload(params.data(), seed, 0, 0, parameters);  // the same initial parameters on every rank

  std::vector<float> ref_p(static_cast<size_t>(parameters));
  for (int64_t i = 0; i < parameters; ++i) ref_p[static_cast<size_t>(i)] = value(seed, 0, i);
  std::vector<float> ref_m(ref_p.size(), 0.0f), ref_v(ref_p.size(), 0.0f), ref_g(ref_p.size());
  std::vector<float> shard_m(static_cast<size_t>(counts[own]), 0.0f), shard_v(shard_m.size(), 0.0f);

  for (int step = 1; step <= 3; ++step) {
    const uint64_t grad_seed = mix(seed + 1000 + static_cast<uint64_t>(step));
    r.upload(grads.data(), grad_seed, r.rank(), 0, parameters);
    r.poison(shard.data(), counts[own]);
    auto scattered = r.comm.reduce_scatter_async(grads.data(), shard.data(), counts);
    wait(r, *scattered, "zero reduce_scatter");
    std::vector<float> g = r.download(shard.data(), counts[own]);
    std::vector<float> p = r.download(params.data() + offsets[own], counts[own]);
    adamw(p.data(), g.data(), shard_m.data(), shard_v.data(), counts[own], step, grad_scale);
    if (counts[own] > 0)
      CUDA_CHECK(cudaMemcpyAsync(params.data() + offsets[own], p.data(),
                                 static_cast<size_t>(counts[own]) * sizeof(float),
                                 cudaMemcpyHostToDevice, r.compute));
    auto gathered = r.comm.all_gather_async(params.data() + offsets[own], params.data(), counts);
    wait(r, *gathered, "zero all_gather");

    std::fill(ref_g.begin(), ref_g.end(), 0.0f);
    for (int q = 0; q < n; ++q)
      for (int64_t i = 0; i < parameters; ++i) ref_g[static_cast<size_t>(i)] += value(grad_seed, q, i);
    adamw(ref_p.data(), ref_g.data(), ref_m.data(), ref_v.data(), parameters, step, grad_scale);
  }
  return check_output(r, params.data(), ref_p);
}

// ---- driver ---------------------------------------------------------------------------------

struct Outcome {
  int cases = 0, passed = 0;
  std::string first_failure;
};
using Outcomes = std::map<std::string, Outcome>;  // check name -> outcome (ordered by name)

void run_case(Rank& r, Outcomes& outcomes, const std::string& check, const std::string& label,
              const Case& body) {
  std::string error;
  const auto start = std::chrono::steady_clock::now();
  try {
    error = body(r);
  } catch (const std::exception& e) {
    error = std::string("exception: ") + e.what();
  }
  try {
    CUDA_CHECK(cudaStreamSynchronize(r.compute));
  } catch (const std::exception& e) {
    if (error.empty()) error = e.what();
  }
  r.staging.clear();
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  Outcome& o = outcomes[check];
  ++o.cases;
  if (error.empty()) ++o.passed;
  else if (o.first_failure.empty()) o.first_failure = label + ": " + error;
  std::printf("[rank %d/%d] %-16s %-34s %s (%.1f ms)%s%s\n", r.rank(), r.size(), check.c_str(),
              label.c_str(), error.empty() ? "PASS" : "FAIL", ms, error.empty() ? "" : ": ",
              error.c_str());
  std::fflush(stdout);
}

// Every check on one rank of `host`'s job, on `device`.
Outcomes run_rank(Communicator& host, int device, uint64_t seed) {
  Outcomes outcomes;
  CUDA_CHECK(cudaSetDevice(device));
  cudaStream_t compute = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
  std::unique_ptr<Communicator> made;
  try {
    made = dj::comm::make_nccl_communicator(host, device, compute);
  } catch (const std::exception& e) {
    outcomes["init"] = {1, 0, e.what()};
    std::printf("[rank %d/%d] init FAIL: %s\n", host.rank(), host.size(), e.what());
    cudaStreamDestroy(compute);
    return outcomes;
  }
  auto* comm = dynamic_cast<NcclCommunicator*>(made.get());
  if (comm == nullptr || comm->rank() != host.rank() || comm->size() != host.size()) {
    outcomes["init"] = {1, 0, "make_nccl_communicator did not give an NCCL rank matching the host"};
    return outcomes;
  }
  outcomes["init"] = {1, 1, ""};
  comm->set_timeout_seconds(kOpTimeoutS);
  Rank r{*comm, compute, seed, {}};
  uint64_t salt = 0;
  auto fresh = [&] { return mix(seed + ++salt * 0x100000001B3ull); };

  run_case(r, outcomes, "host helpers", "all_reduce_host/broadcast/barrier",
           [&](Rank& x) { return host_helpers_case(x, fresh()); });
  for (const int64_t count : {int64_t{0}, int64_t{1}, int64_t{1000}, (int64_t{1} << 20) + 3}) {
    const uint64_t s = fresh();
    run_case(r, outcomes, "all_reduce", strprintf("count=%lld", static_cast<long long>(count)),
             [&](Rank& x) { return all_reduce_case(x, count, s); });
  }
  for (const bool grouped : {false, true}) {
    comm->set_force_grouped(grouped);
    const char* path = grouped ? "grouped" : "auto";
    for (const CountSet& set : count_sets(r.size())) {
      const uint64_t s1 = fresh(), s2 = fresh(), s3 = fresh();
      run_case(r, outcomes, "reduce_scatter", strprintf("%s %s", set.name, path),
               [&](Rank& x) { return reduce_scatter_case(x, set.counts, s1); });
      run_case(r, outcomes, "all_gather", strprintf("%s %s separate", set.name, path),
               [&](Rank& x) { return all_gather_case(x, set.counts, s2, false); });
      run_case(r, outcomes, "all_gather", strprintf("%s %s aliased", set.name, path),
               [&](Rank& x) { return all_gather_case(x, set.counts, s3, true); });
    }
    const uint64_t s4 = fresh(), s5 = fresh();
    run_case(r, outcomes, "in flight", strprintf("8 requests %s", path),
             [&](Rank& x) { return in_flight_case(x, s4); });
    run_case(r, outcomes, "zero step", strprintf("adamw x3 %s", path),
             [&](Rank& x) { return zero_step_case(x, s5); });
  }
  comm->set_force_grouped(false);
  const uint64_t s6 = fresh();
  run_case(r, outcomes, "traffic", "counters", [&](Rank& x) { return traffic_case(x, s6); });
  run_case(r, outcomes, "bad counts", "rejected", [&](Rank& x) { return bad_counts_case(x, 0); });

  made.reset();  // ncclCommDestroy before the stream goes
  cudaStreamDestroy(compute);
  return outcomes;
}

void merge(Outcomes& into, const Outcomes& from) {
  for (const auto& [name, o] : from) {
    Outcome& target = into[name];
    target.cases += o.cases;
    target.passed += o.passed;
    if (target.first_failure.empty()) target.first_failure = o.first_failure;
  }
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t seed = std::random_device{}();
  seed = (seed << 32) ^ std::random_device{}();
  int max_ranks = 1 << 30;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--seed" && i + 1 < argc) {
      seed = std::strtoull(argv[++i], nullptr, 10);
    } else if (arg == "--max-ranks" && i + 1 < argc) {
      max_ranks = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--seed N] [--max-ranks N]\n", argv[0]);
      return 2;
    }
  }

  int devices = 0;
  const cudaError_t probe = cudaGetDeviceCount(&devices);
  if (probe != cudaSuccess || devices == 0) {
    std::fprintf(stderr,
                 "nccl_check: no usable CUDA device (%s); this check needs a GPU and its driver\n",
                 probe != cudaSuccess ? cudaGetErrorString(probe) : "no device found");
    return 2;
  }
  int nccl_version = 0;
  ncclGetVersion(&nccl_version);
  std::printf("nccl_check: %d CUDA device(s), NCCL %d (built against %d), seed %llu\n", devices,
              nccl_version, NCCL_VERSION_CODE, static_cast<unsigned long long>(seed));
  for (int d = 0; d < devices; ++d) {
    cudaDeviceProp properties{};
    if (cudaGetDeviceProperties(&properties, d) == cudaSuccess)
      std::printf("  device %d: %s, compute capability %d.%d\n", d, properties.name,
                  properties.major, properties.minor);
  }
  std::fflush(stdout);

  std::vector<std::pair<std::string, Outcomes>> runs;
  try {
    std::unique_ptr<Communicator> host = dj::comm::make_host_communicator();
    runs.emplace_back("1 rank", run_rank(*host, 0, seed));
  } catch (const std::exception& e) {
    runs.emplace_back("1 rank", Outcomes{{"init", {1, 0, e.what()}}});
  }

  const int ranks = std::min(devices, max_ranks);
  if (ranks > 1) {
    ThreadGroup group(ranks);
    std::vector<Outcomes> per_rank(static_cast<size_t>(ranks));
    std::vector<std::thread> threads;
    for (int rank = 0; rank < ranks; ++rank) {
      threads.emplace_back([&, rank] {
        ThreadHostCommunicator host(group, rank);
        try {
          per_rank[static_cast<size_t>(rank)] = run_rank(host, rank, mix(seed + 7));
        } catch (const std::exception& e) {
          per_rank[static_cast<size_t>(rank)] = Outcomes{{"init", {1, 0, e.what()}}};
        }
      });
    }
    for (std::thread& thread : threads) thread.join();
    Outcomes all;
    for (const Outcomes& o : per_rank) merge(all, o);
    runs.emplace_back(strprintf("%d ranks", ranks), all);
  } else if (devices > 1) {
    std::printf("nccl_check: --max-ranks %d: the several-rank run is skipped\n", max_ranks);
  }

  bool ok = true;
  std::printf("\n%-16s %-8s %-7s %-6s %s\n", "check", "ranks", "cases", "result", "first failure");
  for (const auto& [label, outcomes] : runs) {
    for (const auto& [name, o] : outcomes) {
      const bool pass = o.passed == o.cases && o.cases > 0;
      ok = ok && pass;
      std::printf("%-16s %-8s %3d/%-3d %-6s %s\n", name.c_str(), label.c_str(), o.passed, o.cases,
                  pass ? "PASS" : "FAIL", o.first_failure.substr(0, 160).c_str());
    }
  }
  std::printf("nccl_check: %s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}

#include "comm/communicator.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "comm/single_communicator.h"
#include "kernels/core/error.h"
#if DIJIANG_HAVE_MPI
#include "comm/mpi_communicator.h"
#endif

namespace dj::comm {

namespace {

constexpr const char* kSlurmStepTasks = "SLURM_STEP_NUM_TASKS";

int64_t env_integer(const char* name) {
  const char* text = std::getenv(name);
  int64_t value = 0;
  if (text == nullptr || std::from_chars(text, text + std::strlen(text), value).ec != std::errc())
    return 0;
  return value;
}

// The environment variable that shows this process is one rank of a parallel launch, or nullptr:
//   OMPI_COMM_WORLD_SIZE      Open MPI's mpirun/mpiexec (also when it starts its daemons by srun);
//   PMIX_RANK                 a PMIx server: srun --mpi=pmix, prterun, Open MPI 5's mpirun;
//   PMI_RANK, PMI_SIZE        PMI-1/PMI-2: MPICH and Intel MPI (hydra), srun --mpi=pmi2;
//   SLURM_STEP_NUM_TASKS > 1  an srun step of several tasks that provides none of the above.
// Slurm variables alone say nothing for a single task: srun sets them for every step, MPI or not,
// and a batch script has SLURM_PROCID and SLURM_NTASKS before any srun, so `srun -n1 dijiang` or
// `dijiang` run by the batch script is one process. SLURM_STEP_NUM_TASKS comes from srun only. Its
// tasks are meant to be one job, and running them as unrelated single processes would train N
// copies side by side, so such a step counts as launched and make_host_communicator explains the
// missing PMI instead.
const char* launch_variable() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
    if (std::getenv(name) != nullptr) return name;
  return env_integer(kSlurmStepTasks) > 1 ? kSlurmStepTasks : nullptr;
}

}  // namespace

void Communicator::all_reduce(float* data, int64_t count, const char* what) {
  wait(*all_reduce_async(data, count), what);
}

void Communicator::reduce_scatter(const float* send, float* recv, std::span<const int64_t> counts,
                                  const char* what) {
  wait(*reduce_scatter_async(send, recv, counts), what);
}

void Communicator::all_gather(const float* send, float* recv, std::span<const int64_t> counts,
                              const char* what) {
  wait(*all_gather_async(send, recv, counts), what);
}

void Communicator::wait(Request& request, const char* what) {
  // Most operations complete within microseconds of the last rank joining, so the first polls
  // spin. Later ones sleep in between: ranks that share cores must leave the CPU to the peer they
  // wait for. Polling goes on throughout because MPI makes progress only inside test().
  constexpr int kSpinPolls = 200;
  constexpr auto kPollInterval = std::chrono::microseconds(100);
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  for (int64_t polls = 0; !request.test(); ++polls) {
    const std::chrono::duration<double> waited = Clock::now() - start;
    if (const int peer = ending_peer(); peer >= 0) {
      const std::string line = fmt::format(
          "dijiang: error: rank {} of {} ({}): {} did not complete (waited {:.1f} s); rank {} is "
          "ending the job\n",
          rank(), size(), host(), what, waited.count(), peer);
      std::fputs(line.c_str(), stderr);
      std::fflush(stderr);
      abort(1);
    }
    if (waited.count() >= timeout_s_) {
      const std::string line = fmt::format(
          "dijiang: error: rank {} of {} ({}): {} did not complete within {:g} s; a peer rank has "
          "probably failed or stopped\n",
          rank(), size(), host(), what, timeout_s_);
      std::fputs(line.c_str(), stderr);
      std::fflush(stderr);
      abort(1);
    }
    if (polls >= kSpinPolls) std::this_thread::sleep_for(kPollInterval);
  }
}

void Communicator::agree(const std::string& error) {
  // A sum of one-hot flags is an all-gather of them, with the timeout of all_reduce_host.
  std::vector<double> failed(static_cast<size_t>(size()), 0.0);
  failed[static_cast<size_t>(rank())] = error.empty() ? 0.0 : 1.0;
  all_reduce_host(failed.data(), size());
  const auto first = std::find_if(failed.begin(), failed.end(), [](double f) { return f > 0.5; });
  if (first == failed.end()) return;

  const int root = static_cast<int>(first - failed.begin());
  int64_t length = rank() == root ? static_cast<int64_t>(error.size()) : 0;
  broadcast_host(&length, sizeof length, root);
  std::string message = rank() == root ? error : std::string(static_cast<size_t>(length), '\0');
  broadcast_host(message.data(), length, root);
  throw JobError(size() > 1 ? fmt::format("rank {}: {}", root, message) : message, rank() == 0);
}

bool launched_by_mpi() { return launch_variable() != nullptr; }

std::unique_ptr<Communicator> make_host_communicator() {
  const char* variable = launch_variable();
  if (variable == nullptr) return std::make_unique<SingleCommunicator>();
#if DIJIANG_HAVE_MPI
  if (variable == kSlurmStepTasks)
    fail(
        "srun started {} tasks without PMI (no PMIX_RANK or PMI_RANK in the environment), so they "
        "cannot form one MPI job; launch with srun --mpi=pmix (or --mpi=pmi2)",
        env_integer(kSlurmStepTasks));
  return std::make_unique<MpiCommunicator>();
#else
  fail(
      "this process is one rank of a parallel launch ({} is set) but this build of dijiang has no "
      "MPI support; rebuild it with MPI (-DDIJIANG_MPI=ON) or run it without mpirun/srun",
      variable);
#endif
}


}  // namespace dj::comm

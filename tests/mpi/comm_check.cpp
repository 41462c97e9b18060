// Checks the host communicator on every rank against sums computed independently from the known
// inputs of all ranks. Usage: comm_check single|mpi|timeout [sleep|stop|fail].
//   single   run directly: the single-process communicator, no MPI runtime;
//   mpi      run by mpirun with any number of ranks;
//   timeout  run by mpirun with at least 2 ranks: rank 1 sleeps for an hour (sleep, the default)
//            or stops itself with SIGSTOP (stop) before an all_reduce that the others wait for
//            with a 1 s timeout, so the job must end with their lines; or it fails (fail) and
//            ends the job while the others wait with the default timeout (see timeout.sh).
// A failed check prints one line naming the rank and ends the whole job, so that no rank hangs in
// a collective its failed peer never joins.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "kernels/core/error.h"
#if DIJIANG_HAVE_MPI
#include "comm/mpi_communicator.h"
#endif

namespace {

using dj::comm::Communicator;

Communicator* comm = nullptr;
int checks = 0;

template <typename... Args>
void check(bool ok, int line, fmt::format_string<Args...> format, Args&&... args) {
  ++checks;
  if (ok) return;
  std::fputs(fmt::format("rank {}: FAIL line {}: {}\n", comm->rank(), line,
                         fmt::format(format, std::forward<Args>(args)...))
                 .c_str(),
             stderr);
  comm->abort(1);
}
#define CHECK(ok, ...) check((ok), __LINE__, __VA_ARGS__)

// Rank r's input at index i: a small integer, so that sums over up to a few ranks are exact in
// float and can be compared with ==. The salt gives each check fresh inputs.
float input(int rank, int64_t i, int salt) {
  return static_cast<float>((i * 7 + rank * 13 + salt * 29) % 101 - 50);
}

float sum_over_ranks(int size, int64_t i, int salt) {
  float sum = 0;
  for (int r = 0; r < size; ++r) sum += input(r, i, salt);
  return sum;
}

std::vector<float> inputs(int rank, int64_t count, int salt) {
  std::vector<float> values(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) values[static_cast<size_t>(i)] = input(rank, i, salt);
  return values;
}

std::vector<int64_t> offsets_of(const std::vector<int64_t>& counts) {
  std::vector<int64_t> offsets(counts.size() + 1, 0);
  std::partial_sum(counts.begin(), counts.end(), offsets.begin() + 1);
  return offsets;
}

// Per-rank counts: uneven, with zeros on some ranks, and all zero.
std::vector<std::vector<int64_t>> count_patterns(int size) {
  std::vector<std::vector<int64_t>> patterns(4, std::vector<int64_t>(static_cast<size_t>(size)));
  for (int r = 0; r < size; ++r) {
    const auto at = static_cast<size_t>(r);
    patterns[0][at] = 3 + 2 * r;
    patterns[1][at] = r % 2 == 1 ? 0 : 1000 + 17 * r;
    patterns[2][at] = r == size - 1 ? 5 : 0;
    patterns[3][at] = 0;
  }
  return patterns;
}

constexpr float kSentinel = -12345.0f;

void check_all_reduce(Communicator& c, int64_t count, int salt) {
  std::vector<float> data = inputs(c.rank(), count, salt);
  c.all_reduce(data.data(), count, "all_reduce check");
  for (int64_t i = 0; i < count; ++i)
    CHECK(data[static_cast<size_t>(i)] == sum_over_ranks(c.size(), i, salt),
          "all_reduce of {} values: [{}] = {}, expected {}", count, i, data[static_cast<size_t>(i)],
          sum_over_ranks(c.size(), i, salt));
}

// The block of reduce_scatter received at the start of `recv`.
void check_reduce_scatter_result(const Communicator& c, const std::vector<int64_t>& counts,
                                 const std::vector<float>& recv, int salt) {
  const std::vector<int64_t> offsets = offsets_of(counts);
  const auto r = static_cast<size_t>(c.rank());
  for (int64_t i = 0; i < counts[r]; ++i)
    CHECK(recv[static_cast<size_t>(i)] == sum_over_ranks(c.size(), offsets[r] + i, salt),
          "reduce_scatter: [{}] = {}, expected {}", i, recv[static_cast<size_t>(i)],
          sum_over_ranks(c.size(), offsets[r] + i, salt));
}

void check_all_gather_result(const Communicator& c, const std::vector<int64_t>& counts,
                             const std::vector<float>& recv, int salt) {
  const std::vector<int64_t> offsets = offsets_of(counts);
  for (int owner = 0; owner < c.size(); ++owner)
    for (int64_t i = offsets[static_cast<size_t>(owner)];
         i < offsets[static_cast<size_t>(owner) + 1]; ++i)
      CHECK(recv[static_cast<size_t>(i)] == input(owner, i, salt),
            "all_gather: [{}] = {}, expected {}", i, recv[static_cast<size_t>(i)],
            input(owner, i, salt));
  CHECK(recv[static_cast<size_t>(offsets.back())] == kSentinel, "all_gather wrote past the end");
}

void check_reduce_scatter(Communicator& c, const std::vector<int64_t>& counts, int salt) {
  const int64_t total = offsets_of(counts).back();
  const std::vector<float> send = inputs(c.rank(), total, salt);
  std::vector<float> recv(static_cast<size_t>(counts[static_cast<size_t>(c.rank())]) + 1,
                          kSentinel);
  c.reduce_scatter(send.data(), recv.data(), counts, "reduce_scatter check");
  check_reduce_scatter_result(c, counts, recv, salt);
  CHECK(recv.back() == kSentinel, "reduce_scatter wrote past its block");

  // In place: the whole input in `recv`, this rank's block left at its start.
  std::vector<float> buffer = inputs(c.rank(), total, salt);
  c.reduce_scatter(buffer.data(), buffer.data(), counts, "in-place reduce_scatter check");
  check_reduce_scatter_result(c, counts, buffer, salt);
}

// Rank r's block holds input(r, i) at the global indices i it owns.
void check_all_gather(Communicator& c, const std::vector<int64_t>& counts, int salt,
                      bool in_place) {
  const std::vector<int64_t> offsets = offsets_of(counts);
  const auto r = static_cast<size_t>(c.rank());
  std::vector<float> recv(static_cast<size_t>(offsets.back()) + 1, kSentinel);
  std::vector<float> own;
  for (int64_t i = offsets[r]; i < offsets[r + 1]; ++i) own.push_back(input(c.rank(), i, salt));
  const float* send = own.data();
  if (in_place) {
    std::copy(own.begin(), own.end(), recv.begin() + offsets[r]);
    send = recv.data() + offsets[r];
  }
  c.all_gather(send, recv.data(), counts, "all_gather check");
  check_all_gather_result(c, counts, recv, salt);
}

// Four operations in flight at once, completed in the reverse order of their start.
void check_concurrent(Communicator& c) {
  const std::vector<int64_t> counts = count_patterns(c.size())[1];
  const std::vector<int64_t> offsets = offsets_of(counts);
  const auto r = static_cast<size_t>(c.rank());
  std::vector<float> a = inputs(c.rank(), 777, 10), d = inputs(c.rank(), 5, 13);
  const std::vector<float> scatter_send = inputs(c.rank(), offsets.back(), 11);
  std::vector<float> scatter_recv(static_cast<size_t>(counts[r]) + 1, kSentinel);
  std::vector<float> gathered(static_cast<size_t>(offsets.back()) + 1, kSentinel);
  for (int64_t i = offsets[r]; i < offsets[r + 1]; ++i)
    gathered[static_cast<size_t>(i)] = input(c.rank(), i, 12);

  auto ra = c.all_reduce_async(a.data(), static_cast<int64_t>(a.size()));
  auto rb = c.reduce_scatter_async(scatter_send.data(), scatter_recv.data(), counts);
  auto rc = c.all_gather_async(gathered.data() + offsets[r], gathered.data(), counts);
  auto rd = c.all_reduce_async(d.data(), static_cast<int64_t>(d.size()));
  c.wait(*rd, "concurrent all_reduce d");
  c.wait(*rc, "concurrent all_gather");
  c.wait(*rb, "concurrent reduce_scatter");
  c.wait(*ra, "concurrent all_reduce a");
  CHECK(ra->test() && rb->test() && rc->test() && rd->test(),
        "a completed request no longer tests true");
  for (size_t i = 0; i < a.size(); ++i)
    CHECK(a[i] == sum_over_ranks(c.size(), static_cast<int64_t>(i), 10),
          "concurrent all_reduce a[{}]", i);
  for (size_t i = 0; i < d.size(); ++i)
    CHECK(d[i] == sum_over_ranks(c.size(), static_cast<int64_t>(i), 13),
          "concurrent all_reduce d[{}]", i);
  check_reduce_scatter_result(c, counts, scatter_recv, 11);
  CHECK(scatter_recv.back() == kSentinel, "concurrent reduce_scatter wrote past its block");
  check_all_gather_result(c, counts, gathered, 12);
}

void check_host_operations(Communicator& c) {
  const int n = c.size();
  // Values exact in double: an integer, a half and a large power of two per rank.
  std::vector<double> values = {c.rank() + 1.0, 0.5 * c.rank(), 1e12 * (c.rank() + 1)};
  c.all_reduce_host(values.data(), static_cast<int64_t>(values.size()));
  CHECK(values[0] == n * (n + 1) / 2.0, "all_reduce_host[0] = {}", values[0]);
  CHECK(values[1] == 0.5 * n * (n - 1) / 2.0, "all_reduce_host[1] = {}", values[1]);
  CHECK(values[2] == 1e12 * n * (n + 1) / 2.0, "all_reduce_host[2] = {}", values[2]);
  c.all_reduce_host(nullptr, 0);

  for (int root = 0; root < n; ++root) {
    unsigned char bytes[13];
    for (int i = 0; i < 13; ++i)
      bytes[i] = static_cast<unsigned char>(c.rank() == root ? root * 31 + i : 0xee);
    c.broadcast_host(bytes, sizeof bytes, root);
    for (int i = 0; i < 13; ++i)
      CHECK(bytes[i] == static_cast<unsigned char>(root * 31 + i),
            "broadcast_host from {}: byte {} = {}", root, i, bytes[i]);
  }

  // The last rank arrives late: nobody may leave the barrier before it entered. steady_clock is
  // the system-wide monotonic clock, comparable across the ranks of this one host.
  using Clock = std::chrono::steady_clock;
  if (c.rank() == n - 1) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::vector<double> entered(static_cast<size_t>(n), 0.0);
  entered[static_cast<size_t>(c.rank())] =
      std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
  c.barrier();
  const double left = std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
  c.all_reduce_host(entered.data(), n);
  for (int r = 0; r < n; ++r)
    CHECK(left >= entered[static_cast<size_t>(r)], "left the barrier before rank {} entered it", r);
}

std::string agree_error(Communicator& c, const std::string& error) {
  try {
    c.agree(error);
  } catch (const dj::Error& e) {
    return e.what();
  }
  return "";
}

void check_agree(Communicator& c) {
  const int n = c.size();
  CHECK(agree_error(c, "").empty(), "agree failed with no failing rank");
  // Ranks 1 and n-1 fail (rank 0 alone when it runs alone); the lowest failing rank's message wins.
  const bool fails = n == 1 || c.rank() == 1 || c.rank() == n - 1;
  const std::string got =
      agree_error(c, fails ? fmt::format("setup failed on rank {}", c.rank()) : "");
  const std::string expected = n == 1 ? "setup failed on rank 0" : "rank 1: setup failed on rank 1";
  CHECK(got == expected, "agree threw '{}', expected '{}'", got, expected);
  // Everyone failing: still rank 0's message, and a long one arrives whole.
  const std::string long_message(5000 + c.rank(), static_cast<char>('a' + c.rank()));
  const std::string all = agree_error(c, long_message);
  const std::string rank0(5000, 'a');
  CHECK(all == (n == 1 ? rank0 : "rank 0: " + rank0),
        "agree with every rank failing threw {} bytes", all.size());
  CHECK(agree_error(c, "").empty(), "agree failed after the failures were reported");
}

void check_traffic(Communicator& c) {
  const std::vector<int64_t> counts = count_patterns(c.size())[0];
  const int64_t total = offsets_of(counts).back(), own = counts[static_cast<size_t>(c.rank())];
  c.reset_traffic();
  CHECK(c.traffic().total() == 0, "traffic after reset");
  std::vector<float> data(100, 1.0f), recv(static_cast<size_t>(total));
  c.all_reduce(data.data(), 100, "traffic all_reduce");
  double metric = 1;
  c.all_reduce_host(&metric, 1);
  c.reduce_scatter(recv.data(), data.data(), counts, "traffic reduce_scatter");
  c.all_gather(data.data(), recv.data(), counts, "traffic all_gather");
  char flag[7] = {};
  c.broadcast_host(flag, sizeof flag, 0);
  c.barrier();
  const dj::comm::Traffic& t = c.traffic();
  CHECK(t.all_reduce == 100 * 4 + 8, "all_reduce traffic {}", t.all_reduce);
  CHECK(t.reduce_scatter == total * 4, "reduce_scatter traffic {}, expected {}", t.reduce_scatter,
        total * 4);
  CHECK(t.all_gather == own * 4, "all_gather traffic {}, expected {}", t.all_gather, own * 4);
  CHECK(t.broadcast == 7, "broadcast traffic {}", t.broadcast);
  CHECK(t.total() == 408 + total * 4 + own * 4 + 7, "total traffic {}", t.total());
}

// Bad arguments fail on the calling rank before anything is sent, identically on every rank.
void check_argument_errors(Communicator& c) {
  const auto fails = [](auto&& call) {
    try {
      call();
    } catch (const dj::Error&) {
      return true;
    }
    return false;
  };
  float value = 0;
  const std::vector<int64_t> too_many(static_cast<size_t>(c.size()) + 1, 1);
  std::vector<int64_t> negative(static_cast<size_t>(c.size()), 1);
  negative.back() = -1;
  CHECK(fails([&] { c.all_reduce_async(&value, -1); }), "negative all_reduce count accepted");
  CHECK(fails([&] { c.reduce_scatter_async(&value, &value, too_many); }),
        "wrong number of counts accepted");
  CHECK(fails([&] { c.all_gather_async(&value, &value, negative); }),
        "negative all_gather count accepted");
  CHECK(fails([&] { c.broadcast_host(&value, 4, c.size()); }),
        "broadcast from a rank beyond the job");
  const std::vector<int64_t> huge(static_cast<size_t>(c.size()), int64_t{1} << 31);
  if (c.backend() == "mpi")
    CHECK(fails([&] { c.all_gather_async(&value, &value, huge); }),
          "all_gather count beyond INT_MAX");
}

#if DIJIANG_HAVE_MPI
// A second MPI communicator (MPI is already initialised, so it neither initialises nor finalises
// it) whose all_reduce goes out in chunks of 5 values: several MPI requests behind one Request.
void check_chunked_all_reduce() {
  dj::comm::MpiCommunicator chunked(5);
  for (const int64_t count : {0, 4, 5, 23, 1001})
    check_all_reduce(chunked, count, 20 + static_cast<int>(count));
  std::vector<float> a = inputs(chunked.rank(), 17, 30), b = inputs(chunked.rank(), 9, 31);
  auto ra = chunked.all_reduce_async(a.data(), 17);
  auto rb = chunked.all_reduce_async(b.data(), 9);
  chunked.wait(*rb, "chunked all_reduce b");
  chunked.wait(*ra, "chunked all_reduce a");
  for (size_t i = 0; i < a.size(); ++i)
    CHECK(a[i] == sum_over_ranks(chunked.size(), static_cast<int64_t>(i), 30), "chunked a[{}]", i);
  for (size_t i = 0; i < b.size(); ++i)
    CHECK(b[i] == sum_over_ranks(chunked.size(), static_cast<int64_t>(i), 31), "chunked b[{}]", i);
  CHECK(chunked.traffic().all_reduce == (4 + 5 + 23 + 1001 + 17 + 9) * 4, "chunked traffic {}",
        chunked.traffic().all_reduce);
  // Reduce-scatters over windows of 5 values: blocks that span windows, blocks inside one, empty
  // blocks.
  const int n = chunked.size();
  for (const std::vector<int64_t>& counts :
       {std::vector<int64_t>(static_cast<size_t>(n), 7), std::vector<int64_t>(static_cast<size_t>(n), 2)}) {
    std::vector<int64_t> uneven = counts;
    uneven[0] = 0;
    if (n > 1) uneven[static_cast<size_t>(n) - 1] = 13;
    check_reduce_scatter(chunked, counts, 40);
    check_reduce_scatter(chunked, uneven, 41);
  }
}
#endif

void run_checks(Communicator& c, const std::string& mode) {
  CHECK(c.backend() == mode, "backend {} in mode {}", c.backend(), mode);
  CHECK(dj::comm::launched_by_mpi() == (mode == "mpi"), "launched_by_mpi() disagrees with mode {}",
        mode);
  CHECK(c.rank() >= 0 && c.rank() < c.size(), "rank {} of {}", c.rank(), c.size());
  if (const char* world = std::getenv("OMPI_COMM_WORLD_SIZE"))
    CHECK(c.size() == std::atoi(world), "size {} under a launch of {}", c.size(), world);
  CHECK(!c.host().empty(), "no host name");
  CHECK(c.timeout_seconds() == 600.0, "default timeout {}", c.timeout_seconds());

  int salt = 0;
  for (const int64_t count : {int64_t{0}, int64_t{1}, int64_t{1003}, int64_t{65537}})
    check_all_reduce(c, count, ++salt);
  for (const std::vector<int64_t>& counts : count_patterns(c.size())) {
    check_reduce_scatter(c, counts, ++salt);
    check_all_gather(c, counts, ++salt, false);
    check_all_gather(c, counts, ++salt, true);
  }
  check_concurrent(c);
  check_host_operations(c);
  check_agree(c);
  check_traffic(c);
  check_argument_errors(c);
#if DIJIANG_HAVE_MPI
  if (mode == "mpi") check_chunked_all_reduce();
#endif
  c.barrier();
  if (c.rank() == 0)
    std::printf("comm_check: %d checks passed on each of %d ranks (%s)\n", checks, c.size(),
                mode.c_str());
}

// Rank 1 does not join before the others' timeout: they must report it and end the job. Asleep,
// it would join after an hour, far beyond any bound of the test; stopped, only the launcher's
// SIGCONT as it ends the job lets it go on (and then it finds the job ending).
// Failing, it ends the job itself, and the others, still within their timeout, must report that.
void run_timeout(Communicator& c, const std::string& late) {
  CHECK(c.size() >= 2, "the timeout mode needs at least 2 ranks");
  c.barrier();
  if (late != "fail") c.set_timeout_seconds(1.0);
  if (c.rank() == 1) {
    if (late == "stop") {
      std::raise(SIGSTOP);
    } else if (late == "fail") {
      std::fprintf(stderr, "dijiang: error: rank 1 of %d (%s): failing on purpose\n", c.size(),
                   c.host().c_str());
      c.abort(1);
    } else {
      std::this_thread::sleep_for(std::chrono::hours(1));
    }
  }
  float value = 1;
  c.all_reduce(&value, 1, "all_reduce of the timeout probe");
  CHECK(false, "the all_reduce completed although rank 1 joined after the timeout");
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc >= 2 ? argv[1] : "";
  const std::string late = argc == 3 ? argv[2] : "sleep";
  if ((mode != "single" && mode != "mpi" && mode != "timeout") || argc > 3 ||
      (argc == 3 && (mode != "timeout" || (late != "sleep" && late != "stop" && late != "fail")))) {
    std::fprintf(stderr, "usage: %s single|mpi|timeout [sleep|stop|fail]\n", argv[0]);
    return 2;
  }
  std::unique_ptr<Communicator> owned;
  try {
    owned = dj::comm::make_host_communicator();
    comm = owned.get();
    if (mode == "timeout")
      run_timeout(*owned, late);
    else
      run_checks(*owned, mode);
  } catch (const dj::Error& e) {
    std::fprintf(stderr, "comm_check: error: %s\n", e.what());
    if (owned) owned->abort(1);
    return 1;
  }
  owned.reset();
  return 0;
}

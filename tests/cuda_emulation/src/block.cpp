// Kernel execution of the CUDA emulation. A launch runs on its device's worker thread, one block
// at a time; the threads of a block are fibers (boost.context) on pooled, guard-protected stacks
// (fiber_stacks.cpp), switched only at barriers and warp-synchronous operations. Here: the
// scheduler, __syncthreads, the scheduling of the warp operations (shuffles, votes, __syncwarp,
// ldmatrix, mma.sync; their arithmetic is in warp_math.cpp), cp.async with deferred completion, the
// dynamic shared memory of a block, and the fault handler that names the kernel.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <boost/context/fiber.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <deque>
#include <numeric>
#include <vector>

#include "fiber_stacks.h"
#include "internal.h"
#include "warp_math.h"

namespace ctx = boost::context;

namespace dj::emu {

__thread const ThreadInfo* current_thread = nullptr;
__thread const char* current_operation = nullptr;

namespace {

// ---- threads, warps, blocks ----------------------------------------------------------------------------

struct CpCopy {
  unsigned char* dst;
  unsigned char bytes[16];
  int size;
};

enum class Wait : uint8_t { Runnable, Barrier, Warp, Exited };

struct EmuThread {
  ThreadInfo info{};
  int index = 0, lane = 0, warp = 0;
  Wait state = Wait::Runnable;
  const char* wait_what = "";
  const char* wait_file = "";
  int wait_line = 0;
  ctx::fiber fiber, back;
  LaneSlot slot;
  std::vector<CpCopy> open;                // cp.async issued since the last commit
  std::deque<std::vector<CpCopy>> groups;  // committed groups, oldest first
};

enum class WarpKind : uint8_t { Syncwarp, Shuffle, Vote, Ldmatrix, Mma };
const char* kind_name(WarpKind kind, int sub) {
  switch (kind) {
    case WarpKind::Syncwarp: return "__syncwarp";
    case WarpKind::Shuffle: {
      static const char* names[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync"};
      return names[sub & 3];
    }
    case WarpKind::Vote: {
      static const char* names[] = {"__ballot_sync", "__any_sync", "__all_sync"};
      return names[sub % 3];
    }
    case WarpKind::Ldmatrix: return "ldmatrix";
    case WarpKind::Mma: return "mma.sync";
  }
  return "?";
}

struct WarpOp {
  WarpKind kind;
  int sub;
  const char* file;
  int line;
  unsigned mask;
  unsigned arrived;
};

struct Warp {
  std::vector<WarpOp> ops;  // in progress (disjoint masks)
  unsigned existing = 0, exited = 0;
};

struct Block {
  const Launch* launch = nullptr;
  EmuThread* threads = nullptr;
  int count = 0;
  std::vector<Warp> warps;
  std::vector<int> order;  // run order of the threads
  bool lanes_descending = false;
  int live = 0, at_barrier = 0;
  const char* barrier_file = "";
  int barrier_line = 0;
  std::deque<EmuThread*> runnable;
  unsigned char* shared = nullptr;
  size_t shared_bytes = 0;
};

struct Worker {
  StackPool stacks;
  std::unique_ptr<EmuThread[]> threads{new EmuThread[kMaxThreadsPerBlock]};
  unsigned char* shared_end = nullptr;  // the guard page after the dynamic shared memory
  size_t shared_capacity = 0;
  Block block;
};

__thread Worker* t_worker = nullptr;
__thread Block* t_block = nullptr;
__thread EmuThread* t_self = nullptr;
__thread const char* t_kernel = nullptr;

Worker& worker() {
  if (t_worker == nullptr) {
    auto* w = new Worker();  // one per worker thread, for the life of the process
    const size_t page = page_bytes();
    w->shared_capacity = (std::max(config().shared_optin, size_t{227 * 1024}) + page - 1) / page * page;
    void* map = mmap(nullptr, w->shared_capacity + page, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED) fatal("cannot map the emulated shared memory");
    w->shared_end = static_cast<unsigned char*>(map) + w->shared_capacity;
    mprotect(w->shared_end, page, PROT_NONE);
    t_worker = w;
  }
  return *t_worker;
}

bool same_site(const char* file_a, int line_a, const char* file_b, int line_b) {
  return line_a == line_b && (file_a == file_b || std::strcmp(file_a, file_b) == 0);
}

std::string where(const EmuThread& t) {
  const ThreadInfo& i = t.info;
  return strprintf("block (%u, %u, %u) thread (%u, %u, %u)", i.block_idx.x, i.block_idx.y, i.block_idx.z,
                   i.thread_idx.x, i.thread_idx.y, i.thread_idx.z);
}

const char* kernel_name() { return t_kernel != nullptr ? t_kernel : "?"; }

EmuThread& self(const char* what) {
  if (t_self == nullptr) fatal("%s called outside a kernel", what);
  return *t_self;
}

void yield(EmuThread& t) { t.back = std::move(t.back).resume(); }

void land(std::vector<CpCopy>& group) {
  for (const CpCopy& c : group) std::memcpy(c.dst, c.bytes, static_cast<size_t>(c.size));
  group.clear();
}

void land_all(EmuThread& t) {
  if (!t.open.empty()) t.groups.push_back(std::move(t.open));
  t.open.clear();
  for (auto& g : t.groups) land(g);
  t.groups.clear();
}

void release_barrier(Block& b, EmuThread* running) {
  b.at_barrier = 0;
  for (int i : b.order) {
    EmuThread& t = b.threads[i];
    if (t.state != Wait::Barrier) continue;
    t.state = Wait::Runnable;
    if (&t != running) b.runnable.push_back(&t);
  }
}

void thread_exit(EmuThread& t) {
  Block& b = *t_block;
  land_all(t);  // copies still in flight complete on the device as well
  t.state = Wait::Exited;
  --b.live;
  Warp& w = b.warps[static_cast<size_t>(t.warp)];
  const unsigned bit = 1u << t.lane;
  w.exited |= bit;
  for (const WarpOp& op : w.ops)
    if ((op.mask & bit) != 0 && (op.arrived & bit) == 0)
      fatal("kernel %s: %s exited while lanes of its warp wait for it in %s at %s:%d", kernel_name(),
            where(t).c_str(), kind_name(op.kind, op.sub), op.file, op.line);
  if (b.at_barrier > 0 && b.at_barrier == b.live) release_barrier(b, nullptr);
}

[[noreturn]] void deadlock(Block& b) {
  std::string what;
  int at_barrier = 0, exited = 0;
  for (int i = 0; i < b.count; ++i) {
    const EmuThread& t = b.threads[i];
    if (t.state == Wait::Barrier) ++at_barrier;
    if (t.state == Wait::Exited) ++exited;
  }
  if (at_barrier > 0)
    what += strprintf("; %d threads wait at __syncthreads %s:%d", at_barrier, b.barrier_file, b.barrier_line);
  for (size_t w = 0; w < b.warps.size(); ++w)
    for (const WarpOp& op : b.warps[w].ops)
      what += strprintf("; warp %zu: lanes 0x%08x wait in %s at %s:%d for lanes 0x%08x", w, op.arrived,
                        kind_name(op.kind, op.sub), op.file, op.line, op.mask & ~op.arrived);
  if (exited > 0) what += strprintf("; %d threads exited", exited);
  const ThreadInfo& i = b.threads[0].info;
  fatal("kernel %s: block (%u, %u, %u) cannot continue (a barrier or warp operation that some threads never "
        "reach)%s",
        kernel_name(), i.block_idx.x, i.block_idx.y, i.block_idx.z, what.c_str());
}

// ---- warp operations ---------------------------------------------------------------------------------

EmuThread& lane_thread(Block& b, int warp, int lane) { return b.threads[warp * 32 + lane]; }

void complete(Block& b, int warp, const WarpOp& op) {
  switch (op.kind) {
    case WarpKind::Syncwarp: break;
    case WarpKind::Shuffle:
      for (int lane = 0; lane < 32; ++lane) {
        if ((op.mask >> lane & 1u) == 0) continue;
        LaneSlot& s = lane_thread(b, warp, lane).slot;
        const int src = shuffle_source(lane, op.sub, s.arg, s.width);
        if ((op.mask >> src & 1u) == 0)
          fatal("kernel %s: %s at %s:%d: lane %d reads lane %d, which is not in the mask 0x%08x", kernel_name(),
                kind_name(op.kind, op.sub), op.file, op.line, lane, src, op.mask);
        s.out = lane_thread(b, warp, src).slot.in;
      }
      break;
    case WarpKind::Vote: {
      unsigned ballot = 0;
      for (int lane = 0; lane < 32; ++lane)
        if ((op.mask >> lane & 1u) != 0 && lane_thread(b, warp, lane).slot.predicate != 0) ballot |= 1u << lane;
      const uint64_t result = op.sub == 0 ? ballot : op.sub == 1 ? (ballot != 0) : (ballot == op.mask);
      for (int lane = 0; lane < 32; ++lane)
        if ((op.mask >> lane & 1u) != 0) lane_thread(b, warp, lane).slot.out = result;
      break;
    }
    case WarpKind::Ldmatrix:
    case WarpKind::Mma: {
      LaneSlot* lanes[32];
      for (int lane = 0; lane < 32; ++lane) lanes[lane] = &lane_thread(b, warp, lane).slot;
      if (op.kind == WarpKind::Mma)
        mma_lanes(lanes);
      else
        ldmatrix_lanes(lanes, op.mask, op.sub & 7, (op.sub & 8) != 0);
      break;
    }
  }
}

// The calling lane joins warp operation (kind, sub) at file:line with `mask` (the .aligned PTX
// operations take the whole warp); returns once every lane of the mask has arrived.
void arrive(WarpKind kind, int sub, unsigned mask, const char* file, int line) {
  EmuThread& t = self(kind_name(kind, sub));
  Block& b = *t_block;
  Warp& w = b.warps[static_cast<size_t>(t.warp)];
  const unsigned bit = 1u << t.lane;
  const unsigned need = mask & w.existing;  // lanes past the end of the block do not exist
  if ((need & bit) == 0)
    fatal("kernel %s: %s at %s:%d by %s (lane %d), which is not in the mask 0x%08x", kernel_name(),
          kind_name(kind, sub), file, line, where(t).c_str(), t.lane, mask);
  if ((need & w.exited) != 0)
    fatal("kernel %s: %s at %s:%d with mask 0x%08x, but lanes 0x%08x of the warp have exited", kernel_name(),
          kind_name(kind, sub), file, line, mask, need & w.exited);
  size_t index = w.ops.size();
  for (size_t i = 0; i < w.ops.size(); ++i)
    if ((w.ops[i].mask & need) != 0) index = i;
  if (index == w.ops.size()) {
    w.ops.push_back(WarpOp{kind, sub, file, line, need, 0});
  } else {
    const WarpOp& op = w.ops[index];
    if (op.kind != kind || op.sub != sub || op.mask != need || !same_site(op.file, op.line, file, line))
      fatal("kernel %s: warp-synchronous mismatch in warp %d of block (%u, %u, %u): lane %d reached %s at %s:%d "
            "(mask 0x%08x) while lanes 0x%08x wait in %s at %s:%d (mask 0x%08x)",
            kernel_name(), t.warp, t.info.block_idx.x, t.info.block_idx.y, t.info.block_idx.z, t.lane,
            kind_name(kind, sub), file, line, need, op.arrived, kind_name(op.kind, op.sub), op.file, op.line,
            op.mask);
  }
  WarpOp& op = w.ops[index];
  op.arrived |= bit;
  if (op.arrived == op.mask) {
    const WarpOp done = op;
    w.ops.erase(w.ops.begin() + static_cast<std::ptrdiff_t>(index));
    complete(b, t.warp, done);
    for (int i = 0; i < 32; ++i) {
      const int lane = b.lanes_descending ? 31 - i : i;
      if ((done.mask >> lane & 1u) == 0 || lane == t.lane) continue;
      EmuThread& other = lane_thread(b, t.warp, lane);
      other.state = Wait::Runnable;
      b.runnable.push_back(&other);
    }
    return;
  }
  t.state = Wait::Warp;
  t.wait_what = kind_name(kind, sub);
  t.wait_file = file;
  t.wait_line = line;
  yield(t);
}

unsigned char* window_check(const void* p, size_t bytes, size_t alignment, const char* what) {
  const Block& b = *t_block;
  const auto* q = static_cast<const unsigned char*>(p);
  if (q < b.shared || q + bytes > b.shared + b.shared_bytes)
    fatal("kernel %s: %s by %s: address %p is not in the block's %zu bytes of dynamic shared memory", kernel_name(),
          what, where(*t_self).c_str(), p, b.shared_bytes);
  if ((reinterpret_cast<uintptr_t>(q) & (alignment - 1)) != 0)
    fatal("kernel %s: %s by %s: shared address %p is not %zu-byte aligned", kernel_name(), what,
          where(*t_self).c_str(), p, alignment);
  return const_cast<unsigned char*>(q);
}

void run_block(Device& device, const Launch& l, Worker& wk, uint3 block_idx) {
  Block& b = wk.block;
  const int bx = static_cast<int>(l.block.x), by = static_cast<int>(l.block.y);
  const int n = static_cast<int>(l.block.x * l.block.y * l.block.z);
  b.launch = &l;
  b.threads = wk.threads.get();
  b.count = n;
  b.live = n;
  b.at_barrier = 0;
  b.runnable.clear();
  b.shared_bytes = (l.shared_bytes + 15) / 16 * 16;
  b.shared = wk.shared_end - b.shared_bytes;
  std::memset(b.shared, 0xFF, b.shared_bytes);  // NaN: reads of shared memory never written show
  const int warps = (n + 31) / 32;
  b.warps.assign(static_cast<size_t>(warps), Warp{});
  for (int w = 0; w < warps; ++w) {
    const int lanes = std::min(32, n - 32 * w);
    b.warps[static_cast<size_t>(w)].existing = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1u;
  }
  // Threads run in a seeded order: the warps rotated and maybe reversed, the lanes of every warp
  // ascending or descending (so that a missing barrier or __syncwarp shows for some seed).
  std::vector<int> warp_order(static_cast<size_t>(warps));
  std::iota(warp_order.begin(), warp_order.end(), 0);
  const uint64_t r = device.rng();
  std::rotate(warp_order.begin(), warp_order.begin() + static_cast<std::ptrdiff_t>(r % static_cast<uint64_t>(warps)),
              warp_order.end());
  if ((r >> 32) & 1u) std::reverse(warp_order.begin(), warp_order.end());
  b.lanes_descending = ((r >> 33) & 1u) != 0;
  b.order.clear();
  for (int w : warp_order) {
    const int lanes = std::min(32, n - 32 * w);
    for (int i = 0; i < lanes; ++i) b.order.push_back(32 * w + (b.lanes_descending ? lanes - 1 - i : i));
  }

  const ThreadInfo base{uint3{0, 0, 0}, block_idx, l.block, l.grid};
  for (int i = 0; i < n; ++i) {
    EmuThread& t = b.threads[i];
    t.info = base;
    t.info.thread_idx = uint3{static_cast<unsigned>(i % bx), static_cast<unsigned>((i / bx) % by),
                              static_cast<unsigned>(i / (bx * by))};
    t.index = i;
    t.lane = i % 32;
    t.warp = i / 32;
    t.state = Wait::Runnable;
    t.open.clear();
    t.groups.clear();
    t.fiber = ctx::fiber(std::allocator_arg, PooledStack{&wk.stacks}, [&t](ctx::fiber&& back) {
      t.back = std::move(back);
      t_block->launch->body();
      thread_exit(t);
      return std::move(t.back);
    });
  }
  for (int i : b.order) b.runnable.push_back(&b.threads[i]);

  t_block = &b;
  while (!b.runnable.empty()) {
    EmuThread* t = b.runnable.front();
    b.runnable.pop_front();
    if (t->state != Wait::Runnable) continue;
    t_self = t;
    current_thread = &t->info;
    t->fiber = std::move(t->fiber).resume();
    t_self = nullptr;
    current_thread = nullptr;
  }
  if (b.live > 0) deadlock(b);
  t_block = nullptr;
}

// ---- fault handler ------------------------------------------------------------------------------------

struct sigaction g_previous_segv, g_previous_bus;

void on_fault(int signal, siginfo_t* info, void*) {
  const auto address = reinterpret_cast<uintptr_t>(info->si_addr);
  char message[1536];
  std::string place;
  const size_t page = page_bytes();
  if (t_worker != nullptr && address >= reinterpret_cast<uintptr_t>(t_worker->shared_end) &&
      address < reinterpret_cast<uintptr_t>(t_worker->shared_end) + page) {
    place = strprintf("past the end of the block's %zu bytes of dynamic shared memory",
                      t_block != nullptr ? t_block->shared_bytes : size_t{0});
  } else {
    place = in_stack_guard(address) ? "stack overflow of an emulated thread" : describe_address(address, false);
  }
  int length = 0;
  if (t_kernel != nullptr) {
    length = std::snprintf(message, sizeof message, "cuda emulation: fault in kernel %s%s%s at address %p%s%s\n",
                           t_kernel, t_self != nullptr ? ", " : "",
                           t_self != nullptr ? where(*t_self).c_str() : "", info->si_addr,
                           place.empty() ? "" : ": ", place.c_str());
  } else if (current_operation != nullptr) {
    length = std::snprintf(message, sizeof message, "cuda emulation: fault in %s at address %p%s%s\n",
                           current_operation, info->si_addr, place.empty() ? "" : ": ", place.c_str());
  } else if (!place.empty()) {
    length = std::snprintf(message, sizeof message,
                           "cuda emulation: fault at address %p: %s (host code using device memory?)\n",
                           info->si_addr, place.c_str());
  }
  if (length > 0) {
    const ssize_t written = write(2, message, static_cast<size_t>(std::min<int>(length, sizeof message - 1)));
    (void)written;
  }
  // Back to the previous disposition; returning re-runs the faulting access under it.
  sigaction(signal, signal == SIGBUS ? &g_previous_bus : &g_previous_segv, nullptr);
}

}  // namespace

void install_fault_handler() {
  struct sigaction action {};
  action.sa_sigaction = on_fault;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&action.sa_mask);
  sigaction(SIGSEGV, &action, &g_previous_segv);
  sigaction(SIGBUS, &action, &g_previous_bus);
}

void prepare_worker_thread() {
  const size_t bytes = 256 * 1024;
  void* stack = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (stack == MAP_FAILED) return;
  stack_t alt{};
  alt.ss_sp = stack;
  alt.ss_size = bytes;
  sigaltstack(&alt, nullptr);
}

void run_kernel(Device& device, const Launch& l) {
  Worker& wk = worker();
  t_kernel = l.name;
  for (unsigned z = 0; z < l.grid.z; ++z)
    for (unsigned y = 0; y < l.grid.y; ++y)
      for (unsigned x = 0; x < l.grid.x; ++x) run_block(device, l, wk, uint3{x, y, z});
  t_kernel = nullptr;
  const std::string damage = check_canaries(device.index);
  if (!damage.empty()) fatal("kernel %s: %s", l.name, damage.c_str());
}

// ---- the device-side API ----------------------------------------------------------------------------

void syncthreads(const char* file, int line) {
  EmuThread& t = self("__syncthreads");
  Block& b = *t_block;
  if (b.at_barrier == 0) {
    b.barrier_file = file;
    b.barrier_line = line;
  } else if (!same_site(b.barrier_file, b.barrier_line, file, line)) {
    fatal("kernel %s: divergent __syncthreads: %s reached the one at %s:%d while %d threads wait at %s:%d",
          kernel_name(), where(t).c_str(), file, line, b.at_barrier, b.barrier_file, b.barrier_line);
  }
  t.state = Wait::Barrier;
  t.wait_what = "__syncthreads";
  t.wait_file = file;
  t.wait_line = line;
  if (++b.at_barrier == b.live) {
    release_barrier(b, &t);
    return;
  }
  yield(t);
}

void syncwarp(unsigned mask, const char* file, int line) { arrive(WarpKind::Syncwarp, 0, mask, file, line); }

uint64_t shuffle(unsigned mask, uint64_t value, int kind, int arg, int width, const char* file, int line) {
  EmuThread& t = self("a shuffle");
  if (width < 1 || width > 32 || (width & (width - 1)) != 0)
    fatal("kernel %s: %s at %s:%d: width %d is not a power of two in 1..32", kernel_name(),
          kind_name(WarpKind::Shuffle, kind), file, line, width);
  t.slot.in = value;
  t.slot.arg = arg;
  t.slot.width = width;
  arrive(WarpKind::Shuffle, kind, mask, file, line);
  return t.slot.out;
}

unsigned vote(unsigned mask, int predicate, int kind, const char* file, int line) {
  EmuThread& t = self("a vote");
  t.slot.predicate = predicate;
  arrive(WarpKind::Vote, kind, mask, file, line);
  return static_cast<unsigned>(t.slot.out);
}

unsigned active_mask() {
  EmuThread& t = self("__activemask");
  const Warp& w = t_block->warps[static_cast<size_t>(t.warp)];
  return w.existing & ~w.exited;
}

unsigned char* dynamic_shared() {
  if (t_block == nullptr) fatal("dynamic shared memory used outside a kernel");
  return t_block->shared;
}

uint32_t shared_address(const void* p, const char* what) {
  self(what);
  return static_cast<uint32_t>(window_check(p, 0, 1, what) - t_block->shared);
}

void ldmatrix(uint32_t* r, int count, bool trans, const void* row_address, const char* file, int line) {
  EmuThread& t = self("ldmatrix");
  if (count != 1 && count != 2 && count != 4) fatal("ldmatrix .x%d does not exist", count);
  // Lanes 8i .. 8i + 7 address the rows of matrix i; the others' addresses are not used.
  if (t.lane < 8 * count) window_check(row_address, 16, 16, "ldmatrix");
  t.slot.address = row_address;
  arrive(WarpKind::Ldmatrix, count | (trans ? 8 : 0), 0xffffffffu, file, line);
  for (int i = 0; i < count; ++i) r[i] = t.slot.r[i];
}

void mma_m16n8k16_bf16(float* d, const uint32_t* a, uint32_t b0, uint32_t b1, const float* c, const char* file,
                       int line) {
  EmuThread& t = self("mma.sync");
  std::memcpy(t.slot.a, a, sizeof t.slot.a);
  t.slot.b[0] = b0;
  t.slot.b[1] = b1;
  std::memcpy(t.slot.c, c, sizeof t.slot.c);
  arrive(WarpKind::Mma, 0, 0xffffffffu, file, line);
  std::memcpy(d, t.slot.d, sizeof t.slot.d);
}

void cp_async(void* dst, const void* src, int cp_size, int src_size) {
  EmuThread& t = self("cp.async");
  if (cp_size != 4 && cp_size != 8 && cp_size != 16)
    fatal("kernel %s: cp.async of %d bytes (4, 8 or 16)", kernel_name(), cp_size);
  if (src_size < 0 || src_size > cp_size)
    fatal("kernel %s: cp.async source size %d outside 0..%d", kernel_name(), src_size, cp_size);
  CpCopy copy{};
  copy.dst = window_check(dst, static_cast<size_t>(cp_size), static_cast<size_t>(cp_size), "cp.async");
  copy.size = cp_size;
  if (src_size > 0) {
    if ((reinterpret_cast<uintptr_t>(src) & static_cast<uintptr_t>(cp_size - 1)) != 0)
      fatal("kernel %s: cp.async by %s: global address %p is not %d-byte aligned", kernel_name(),
            where(t).c_str(), src, cp_size);
    std::memcpy(copy.bytes, src, static_cast<size_t>(src_size));  // read now, written at the wait
  }
  t.open.push_back(copy);
}

void cp_async_commit() {
  EmuThread& t = self("cp.async.commit_group");
  t.groups.push_back(std::move(t.open));
  t.open.clear();
}

void cp_async_wait_group(int pending) {
  EmuThread& t = self("cp.async.wait_group");
  while (static_cast<int>(t.groups.size()) > pending) {
    land(t.groups.front());
    t.groups.pop_front();
  }
}

void cp_async_wait_all() {
  cp_async_commit();
  cp_async_wait_group(0);
}

}  // namespace dj::emu

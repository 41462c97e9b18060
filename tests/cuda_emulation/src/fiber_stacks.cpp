// Stacks of the emulated threads (fiber_stacks.h).
#include "fiber_stacks.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>

#include "internal.h"

namespace dj::emu {

namespace {

// Guard pages of the fiber stacks (appended only, read lock-free).
constexpr int kMaxStackGuards = 1 << 16;
std::array<std::atomic<uintptr_t>, kMaxStackGuards> g_stack_guards{};
std::atomic<int> g_stack_guard_count{0};

}  // namespace

size_t page_bytes() {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return page;
}

boost::context::stack_context StackPool::take() {
  char* bottom = nullptr;
  if (!free_.empty()) {
    bottom = free_.back();
    free_.pop_back();
  } else {
    const size_t page = page_bytes();
    void* map = mmap(nullptr, kFiberStackBytes + page, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED) fatal("cannot map a %zu-byte fiber stack", kFiberStackBytes);
    mprotect(map, page, PROT_NONE);
    const int slot = g_stack_guard_count.fetch_add(1);
    if (slot < kMaxStackGuards) g_stack_guards[static_cast<size_t>(slot)] = reinterpret_cast<uintptr_t>(map);
    bottom = static_cast<char*>(map) + page;
  }
  boost::context::stack_context sc;
  sc.size = kFiberStackBytes;
  sc.sp = bottom + kFiberStackBytes;
  return sc;
}

void StackPool::give(boost::context::stack_context& sc) { free_.push_back(static_cast<char*>(sc.sp) - sc.size); }

bool in_stack_guard(uintptr_t address) {
  const size_t page = page_bytes();
  const int guards = std::min(g_stack_guard_count.load(), kMaxStackGuards);
  for (int i = 0; i < guards; ++i) {
    const uintptr_t guard = g_stack_guards[static_cast<size_t>(i)].load();
    if (address >= guard && address < guard + page) return true;
  }
  return false;
}

}  // namespace dj::emu

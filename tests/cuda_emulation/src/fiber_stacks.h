// Stacks of the emulated threads (fibers): 256 KiB each with a guard page below, pooled per worker
// thread and reused across blocks. The guard pages are remembered so that the fault handler can
// call a fault there a stack overflow.
#pragma once
#include <boost/context/stack_context.hpp>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace dj::emu {

constexpr size_t kFiberStackBytes = 256 * 1024;

size_t page_bytes();

class StackPool {
 public:
  boost::context::stack_context take();
  void give(boost::context::stack_context& sc);

 private:
  std::vector<char*> free_;  // usable bottom (just above the guard page) of each idle stack
};

// boost.context's StackAllocator concept over a StackPool.
struct PooledStack {
  StackPool* pool;
  boost::context::stack_context allocate() { return pool->take(); }
  void deallocate(boost::context::stack_context& sc) noexcept { pool->give(sc); }
};

// Whether `address` lies in the guard page of a fiber stack (lock-free: callable from a signal handler).
bool in_stack_guard(uintptr_t address);

}  // namespace dj::emu

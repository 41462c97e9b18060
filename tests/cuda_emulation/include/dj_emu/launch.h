// Kernel launches under the CPU emulation (used by kernels/cuda/launch.h): the arguments are
// converted to the kernel's parameter types once, the pointer arguments are collected for the
// launch checks, and the grid is queued on the stream.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cuda_runtime.h"

namespace dj::emu {

struct Launch {
  const char* name = "";
  const void* function = nullptr;
  dim3 grid, block;
  size_t shared_bytes = 0;
  cudaStream_t stream = nullptr;
  std::vector<std::pair<int, const void*>> pointers;  // (argument index, value) of pointer arguments
  std::function<void()> body;                          // runs the kernel as the current thread
};

// Checks the launch (configuration, shared memory, pointer arguments) and queues it; on failure
// records the error as cudaGetLastError reports it, with an explanation (launch_detail).
cudaError_t launch(Launch&& launch);
// What the last failed launch of this host thread got wrong ("" when nothing), then forgets it.
std::string take_launch_detail();

template <size_t I, class T>
void collect_pointer(const T& value, std::vector<std::pair<int, const void*>>& out) {
  if constexpr (std::is_pointer_v<T>) out.emplace_back(static_cast<int>(I), static_cast<const void*>(value));
}
template <class Params, size_t... I>
void collect_pointers(const Params& params, std::vector<std::pair<int, const void*>>& out, std::index_sequence<I...>) {
  (collect_pointer<I>(std::get<I>(params), out), ...);
}

template <typename... P, typename... A>
cudaError_t launch_kernel(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t shared_bytes,
                          cudaStream_t stream, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "wrong number of kernel arguments");
  using Params = std::tuple<std::decay_t<P>...>;
  auto params = std::make_shared<const Params>(std::forward<A>(args)...);
  Launch l;
  l.name = name;
  l.function = function_address(kernel);
  l.grid = grid;
  l.block = block;
  l.shared_bytes = shared_bytes;
  l.stream = stream;
  collect_pointers(*params, l.pointers, std::index_sequence_for<P...>{});
  l.body = [kernel, params] { std::apply(kernel, *params); };
  return launch(std::move(l));
}

}  // namespace dj::emu

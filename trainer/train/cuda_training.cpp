// The GPU entry points of trainer/train/gpu.h: the model and its ZeRO state on a CUDA device
// (ShardedTraining over CudaOps), and evaluation on it.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <utility>

#include "kernels/core/error.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "trainer/model/cuda_ops.h"
#include "trainer/model/decoder.h"
#include "trainer/train/gpu.h"
#include "trainer/train/memory_plan.h"
#include "trainer/train/sharded_training.h"
#if DIJIANG_HAVE_NCCL
#include "comm/nccl/nccl_communicator.h"
#endif

namespace dj::gpu {

namespace {

// The node-local rank the launcher gives (Open MPI, Slurm, MPICH/Hydra), or 0.
int local_rank() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "PMI_LOCAL_RANK"})
    if (const char* value = std::getenv(name)) return std::atoi(value);
  return 0;
}

// The collectives of one rank on device buffers, for builds without NCCL: reduce-scatter and
// all-gather of one rank are copies on the compute stream, an all-reduce leaves the data as it is.
class LocalDeviceCommunicator final : public comm::Communicator {
 public:
  LocalDeviceCommunicator(comm::Communicator& host, cudaStream_t stream) : host_(host), stream_(stream) {
    set_timeout_seconds(host.timeout_seconds());
  }
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "local device"; }
  std::string host() const override { return host_.host(); }
  std::unique_ptr<comm::Request> all_reduce_async(float*, int64_t count) override {
    traffic_.all_reduce += count * static_cast<int64_t>(sizeof(float));
    return std::make_unique<Done>();
  }
  std::unique_ptr<comm::Request> reduce_scatter_async(const float* send, float* recv,
                                                      std::span<const int64_t> counts) override {
    copy(send, recv, counts);
    traffic_.reduce_scatter += counts[0] * static_cast<int64_t>(sizeof(float));
    return std::make_unique<Done>();
  }
  std::unique_ptr<comm::Request> all_gather_async(const float* send, float* recv,
                                                  std::span<const int64_t> counts) override {
    copy(send, recv, counts);
    traffic_.all_gather += counts[0] * static_cast<int64_t>(sizeof(float));
    return std::make_unique<Done>();
  }
  void all_reduce_host(double* data, int64_t count) override { host_.all_reduce_host(data, count); }
  void broadcast_host(void* data, int64_t bytes, int root) override { host_.broadcast_host(data, bytes, root); }
  void barrier() override { host_.barrier(); }
  [[noreturn]] void abort(int code) override { host_.abort(code); }
  // The copies were queued on the compute stream itself: already ordered.
  void order_after(comm::Request&, const char*) override {}

 private:
  struct Done final : comm::Request {
    bool test() override { return true; }
  };
  void copy(const float* send, float* recv, std::span<const int64_t> counts) {
    if (counts.size() != 1) fail("a local device communicator has one rank, got {} counts", counts.size());
    if (counts[0] > 0 && send != recv)
      DJ_CUDA_CHECK(cudaMemcpyAsync(recv, send, static_cast<size_t>(counts[0]) * sizeof(float),
                                    cudaMemcpyDeviceToDevice, stream_));
  }
  comm::Communicator& host_;
  cudaStream_t stream_;
};

// This rank's device: local rank mod the devices on the node, alone: device 0.
int select_device(const comm::Communicator& host) {
  int devices = 0;
  DJ_CUDA_CHECK(cudaGetDeviceCount(&devices));
  if (devices < 1) fail("no CUDA device is visible");
  const int device = host.size() > 1 ? local_rank() % devices : 0;
  DJ_CUDA_CHECK(cudaSetDevice(device));
  return device;
}

std::string device_name(int device) {
  cudaDeviceProp properties{};
  DJ_CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
  return fmt::format("CUDA device {}: {} (sm_{}{})", device, properties.name, properties.major, properties.minor);
}

// The stream and the device communicator, made before (and destroyed after) the model and state
// that use them.
struct DeviceContext {
  cudaStream_t stream = nullptr;
  std::unique_ptr<comm::Communicator> comm;
  DeviceContext() { DJ_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking)); }
  ~DeviceContext() {
    comm.reset();
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
  DeviceContext(const DeviceContext&) = delete;
  DeviceContext& operator=(const DeviceContext&) = delete;
};

std::unique_ptr<DeviceContext> make_context(comm::Communicator& host, int device) {
  auto context = std::make_unique<DeviceContext>();
#if DIJIANG_HAVE_NCCL
  context->comm = comm::make_nccl_communicator(host, device, context->stream);
  context->comm->set_timeout_seconds(host.timeout_seconds());
#else
  (void)device;
  if (host.size() > 1) fail("training on several GPUs needs NCCL, and this build has none");
  context->comm = std::make_unique<LocalDeviceCommunicator>(host, context->stream);
#endif
  return context;
}

// Holds the device context in a base constructed before ShardedTraining, which uses it.
struct ContextHolder {
  std::unique_ptr<DeviceContext> context;
};

template <typename T>
class CudaTraining final : private ContextHolder, public ShardedTraining<CudaOps<T>> {
 public:
  CudaTraining(std::unique_ptr<DeviceContext> device, const ModelConfig& config, int stage, std::string description)
      : ContextHolder{std::move(device)},
        ShardedTraining<CudaOps<T>>(config, stage, *this->context->comm,
                                    CudaOps<T>(this->context->stream, this->context->comm->timeout_seconds()),
                                    std::move(description)),
        ops_(this->context->stream) {}

 private:
  std::string model_ops_report() const override { return ops_.memory_report(); }
  CudaOps<T> ops_;
};

template <typename T>
EvalResult evaluate_on(ModelSource& source, const std::vector<int32_t>& ids, int64_t seq_len, int64_t batch) {
  DeviceContext context;
  GPTNeoXModel<CudaOps<T>> model(source.config, CudaOps<T>(context.stream));
  model.load(source.tensors, source.path.string());
  TensorMap().swap(source.tensors);
  return evaluate_windows(model, ids, seq_len, batch);
}

// A decoder whose model lives on a stream of its own.
template <typename T>
class GpuDecoder final : public Decoder {
 public:
  explicit GpuDecoder(ModelSource& source) : decoder_(source, CudaOps<T>(context_.stream)) {}
  const ModelConfig& config() const override { return decoder_.config(); }
  std::unique_ptr<Sequences> start(int64_t batch, int64_t capacity) override {
    return decoder_.start(batch, capacity);
  }

 private:
  DeviceContext context_;  // before the decoder, which uses its stream
  ModelDecoder<CudaOps<T>> decoder_;
};

}  // namespace

std::unique_ptr<TrainingState> make_training_state(const ModelConfig& config, int stage, Precision precision,
                                                   comm::Communicator& host, int64_t planned_bytes,
                                                   const std::string& plan) {
  if (precision == Precision::F64) fail("precision f64: the GPU trains in bf16 or f32");
  // Configurations the kernels cannot run are refused before anything is allocated.
  if (precision == Precision::BF16)
    CudaOps<__nv_bfloat16>::check_config(config);
  else
    CudaOps<float>::check_config(config);
  const int device = select_device(host);
  if (planned_bytes > 0) {
    size_t free = 0, total = 0;
    DJ_CUDA_CHECK(cudaMemGetInfo(&free, &total));
    const auto available = static_cast<int64_t>(free) - gpu_memory_reserve(static_cast<int64_t>(total));
    constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
    if (planned_bytes > available)
      fail("ZeRO stage {} needs about {:.2f} GiB per rank on the GPU, and device {} has {:.2f} GiB free ({:.2f} GiB "
           "after a reserve for the CUDA context); choose a stage that fits, more ranks or a smaller "
           "batch.micro_batch:\n{}",
           stage, static_cast<double>(planned_bytes) / kGiB, device, static_cast<double>(free) / kGiB,
           static_cast<double>(std::max<int64_t>(available, 0)) / kGiB, plan);
  }
  const std::string description = fmt::format("{}, {}", device_name(device), choice_name(precision));
  std::unique_ptr<DeviceContext> context = make_context(host, device);
  if (precision == Precision::BF16)
    return std::make_unique<CudaTraining<__nv_bfloat16>>(std::move(context), config, stage, description);
  return std::make_unique<CudaTraining<float>>(std::move(context), config, stage, description);
}

DeviceMemory device_memory() {
  size_t free = 0, total = 0;
  DJ_CUDA_CHECK(cudaMemGetInfo(&free, &total));
  return {static_cast<int64_t>(free), static_cast<int64_t>(total)};
}

EvalResult evaluate(ModelSource source, const std::vector<int32_t>& ids, int64_t seq_len, int64_t batch,
                    Precision precision) {
  if (precision == Precision::F64) fail("precision f64: the GPU evaluates in bf16 or f32");
  DJ_CUDA_CHECK(cudaSetDevice(0));
  if (precision == Precision::BF16) return evaluate_on<__nv_bfloat16>(source, ids, seq_len, batch);
  return evaluate_on<float>(source, ids, seq_len, batch);
}

std::unique_ptr<Decoder> make_decoder(ModelSource source, Precision precision) {
  if (precision == Precision::F64) fail("precision f64: the GPU decodes in bf16 or f32");
  DJ_CUDA_CHECK(cudaSetDevice(0));
  if (precision == Precision::BF16) return std::make_unique<GpuDecoder<__nv_bfloat16>>(source);
  return std::make_unique<GpuDecoder<float>>(source);
}

}  // namespace dj::gpu

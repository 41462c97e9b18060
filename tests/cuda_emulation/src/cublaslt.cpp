// cuBLASLt of the CUDA emulation: a model of the library's behaviour for what this repository
// uses. The heuristic offers one algorithm when the problem is supported, enforcing the
// requirements the code relies on (fp32 compute and scale, matching A/B types, C = D layouts,
// epilogue operands present, GELU_AUX leading dimension a multiple of 8, alignments at least one
// element); DIJIANG_EMU_CUBLASLT_NO_ALGO=1 makes it offer none. cublasLtMatmul queues
//   D = epilogue(alpha op(A) op(B) + beta C)
// (column-major, fp32 products and accumulation in k order, bf16 operands converted exactly, C
// not read when beta == 0; bias per row of D; tanh GELU; aux = the pre-activation; results
// rounded once to the output type) on the stream.
#include <cublasLt.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "cuda_bf16.h"
#include "internal.h"

struct cublasLtContext {
  int device = 0;
};

struct cublasLtMatmulDescOpaque {
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  cudaDataType_t scale = CUDA_R_32F;
  int32_t transa = CUBLAS_OP_N, transb = CUBLAS_OP_N;
  int32_t pointer_mode = 0;
  uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
  void* aux = nullptr;
  int64_t aux_ld = 0;
};

struct cublasLtMatrixLayoutOpaque {
  cudaDataType_t type = CUDA_R_32F;
  uint64_t rows = 0, cols = 0;
  int64_t ld = 0;
};

struct cublasLtMatmulPreferenceOpaque {
  uint64_t workspace = 0;
  uint32_t alignment[4] = {256, 256, 256, 256};  // A, B, C, D: cuBLASLt's defaults
};

namespace {

using dj::emu::strprintf;

constexpr uint64_t kAlgoMagic = 0x646a2d656d752d31ull;  // "dj-emu-1"

size_t element_bytes(cudaDataType_t type) { return type == CUDA_R_16BF ? 2 : 4; }

bool has_bias(uint32_t e) { return e == CUBLASLT_EPILOGUE_BIAS || e == CUBLASLT_EPILOGUE_GELU_BIAS || e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS; }
bool has_gelu(uint32_t e) {
  return e == CUBLASLT_EPILOGUE_GELU || e == CUBLASLT_EPILOGUE_GELU_BIAS || e == CUBLASLT_EPILOGUE_GELU_AUX ||
         e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
}
bool has_aux(uint32_t e) { return e == CUBLASLT_EPILOGUE_GELU_AUX || e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS; }
bool known_epilogue(uint32_t e) { return e == CUBLASLT_EPILOGUE_DEFAULT || has_bias(e) || has_gelu(e); }

uint32_t alignment_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  if (a == 0) return 256;
  uint32_t alignment = 1;
  while (alignment < 256 && a % (2u * alignment) == 0) alignment *= 2;
  return alignment;
}

struct Shape {
  uint64_t m = 0, n = 0, k = 0;
};

// The problem's shape, or an explanation of why it is not one.
std::string shape_of(const cublasLtMatmulDescOpaque& d, const cublasLtMatrixLayoutOpaque& A,
                     const cublasLtMatrixLayoutOpaque& B, const cublasLtMatrixLayoutOpaque& C,
                     const cublasLtMatrixLayoutOpaque& D, Shape* shape) {
  if ((d.transa != CUBLAS_OP_N && d.transa != CUBLAS_OP_T) || (d.transb != CUBLAS_OP_N && d.transb != CUBLAS_OP_T))
    return "only CUBLAS_OP_N and CUBLAS_OP_T are modelled";
  const uint64_t m = D.rows, n = D.cols;
  const uint64_t a_rows = d.transa == CUBLAS_OP_N ? A.rows : A.cols, k = d.transa == CUBLAS_OP_N ? A.cols : A.rows;
  const uint64_t b_rows = d.transb == CUBLAS_OP_N ? B.rows : B.cols, b_cols = d.transb == CUBLAS_OP_N ? B.cols : B.rows;
  if (a_rows != m || b_rows != k || b_cols != n)
    return strprintf("op(A) %llux%llu, op(B) %llux%llu and D %llux%llu do not fit", (unsigned long long)a_rows,
                     (unsigned long long)k, (unsigned long long)b_rows, (unsigned long long)b_cols,
                     (unsigned long long)m, (unsigned long long)n);
  if (C.type != D.type || C.rows != D.rows || C.cols != D.cols || C.ld != D.ld) return "C and D layouts differ";
  *shape = Shape{m, n, k};
  return "";
}

// Why cuBLASLt would offer no algorithm for the problem ("" when it would offer one).
std::string unsupported(const cublasLtMatmulDescOpaque& d, const cublasLtMatrixLayoutOpaque& A,
                        const cublasLtMatrixLayoutOpaque& B, const cublasLtMatrixLayoutOpaque& C,
                        const cublasLtMatrixLayoutOpaque& D, const cublasLtMatmulPreferenceOpaque& p) {
  if (dj::emu::config().cublaslt_no_algo) return "DIJIANG_EMU_CUBLASLT_NO_ALGO=1";
  if (d.compute != CUBLAS_COMPUTE_32F || d.scale != CUDA_R_32F) return "only fp32 compute and scale are modelled";
  if (d.pointer_mode != 0) return "only host alpha and beta are modelled";
  if (A.type != B.type) return "A and B types differ";
  if (!(A.type == CUDA_R_32F && D.type == CUDA_R_32F) &&
      !(A.type == CUDA_R_16BF && (D.type == CUDA_R_32F || D.type == CUDA_R_16BF)))
    return "type combination not modelled";
  Shape shape;
  const std::string bad = shape_of(d, A, B, C, D, &shape);
  if (!bad.empty()) return bad;
  if (!known_epilogue(d.epilogue)) return "epilogue not modelled";
  if (has_bias(d.epilogue) && d.bias == nullptr) return "bias epilogue without CUBLASLT_MATMUL_DESC_BIAS_POINTER";
  if (has_aux(d.epilogue)) {
    if (d.aux == nullptr) return "GELU_AUX epilogue without CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER";
    if (d.aux_ld % 8 != 0) return "the GELU_AUX leading dimension must be a multiple of 8";
    if (d.aux_ld < static_cast<int64_t>(shape.m)) return "the GELU_AUX leading dimension is below the rows of D";
  }
  const cudaDataType_t types[4] = {A.type, B.type, C.type, D.type};
  for (int i = 0; i < 4; ++i) {
    const uint32_t a = p.alignment[i];
    if (a == 0 || (a & (a - 1)) != 0 || a < element_bytes(types[i])) return "an alignment below one element";
  }
  return "";
}

bool valid_layout(const cublasLtMatrixLayoutOpaque* l) {
  return l != nullptr && l->ld >= static_cast<int64_t>(std::max<uint64_t>(1, l->rows));
}

float load(const void* base, cudaDataType_t type, uint64_t index) {
  if (type == CUDA_R_16BF) return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[index]);
  return static_cast<const float*>(base)[index];
}
void store(void* base, cudaDataType_t type, uint64_t index, float value) {
  if (type == CUDA_R_16BF)
    static_cast<__nv_bfloat16*>(base)[index] = __float2bfloat16_rn(value);
  else
    static_cast<float*>(base)[index] = value;
}

float gelu_tanh(float x) {
  const float k = 0.7978845608028654f;  // sqrt(2 / pi)
  return 0.5f * x * (1.0f + std::tanh(k * (x + 0.044715f * x * x * x)));
}

bool device_matrix(const void* p, const cublasLtMatrixLayoutOpaque& l, uint64_t rows, uint64_t cols) {
  if (rows == 0 || cols == 0) return true;
  const size_t bytes = (static_cast<size_t>(l.ld) * (cols - 1) + rows) * element_bytes(l.type);
  dj::emu::Allocation a;
  return dj::emu::find_allocation(p, bytes, &a) && a.device >= 0;
}

}  // namespace

extern "C" {

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasLtContext{dj::emu::current_device()};
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasLtGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t computeType,
                                        cudaDataType_t scaleType) {
  if (desc == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *desc = new cublasLtMatmulDescOpaque();
  (*desc)->compute = computeType;
  (*desc)->scale = scaleType;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  delete desc;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, size_t sizeInBytes) {
  if (desc == nullptr || buf == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  auto set = [&](auto& field) {
    if (sizeInBytes != sizeof field) return CUBLAS_STATUS_INVALID_VALUE;
    std::memcpy(&field, buf, sizeof field);
    return CUBLAS_STATUS_SUCCESS;
  };
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: {
      int32_t v = 0;
      const cublasStatus_t s = set(v);
      desc->compute = static_cast<cublasComputeType_t>(v);
      return s;
    }
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE: {
      int32_t v = 0;
      const cublasStatus_t s = set(v);
      desc->scale = static_cast<cudaDataType_t>(v);
      return s;
    }
    case CUBLASLT_MATMUL_DESC_POINTER_MODE: return set(desc->pointer_mode);
    case CUBLASLT_MATMUL_DESC_TRANSA: return set(desc->transa);
    case CUBLASLT_MATMUL_DESC_TRANSB: return set(desc->transb);
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return set(desc->epilogue);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return set(desc->bias);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER: return set(desc->aux);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD: return set(desc->aux_ld);
    default: return CUBLAS_STATUS_INVALID_VALUE;  // not modelled
  }
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
  if (layout == nullptr || (type != CUDA_R_32F && type != CUDA_R_16BF)) return CUBLAS_STATUS_INVALID_VALUE;
  *layout = new cublasLtMatrixLayoutOpaque{type, rows, cols, ld};
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  delete layout;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  if (pref == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *pref = new cublasLtMatmulPreferenceOpaque();
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  delete pref;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
                                                    size_t sizeInBytes) {
  if (pref == nullptr || buf == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  switch (attr) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
      if (sizeInBytes != sizeof(uint64_t)) return CUBLAS_STATUS_INVALID_VALUE;
      std::memcpy(&pref->workspace, buf, sizeof(uint64_t));
      return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES:
      if (sizeInBytes != sizeof(uint32_t)) return CUBLAS_STATUS_INVALID_VALUE;
      std::memcpy(&pref->alignment[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES], buf, sizeof(uint32_t));
      return CUBLAS_STATUS_SUCCESS;
    default: return CUBLAS_STATUS_INVALID_VALUE;  // not modelled
  }
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t operationDesc,
                                              cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                                              cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                                              cublasLtMatmulPreference_t preference, int requestedAlgoCount,
                                              cublasLtMatmulHeuristicResult_t heuristicResultsArray[],
                                              int* returnAlgoCount) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (operationDesc == nullptr || !valid_layout(Adesc) || !valid_layout(Bdesc) || !valid_layout(Cdesc) ||
      !valid_layout(Ddesc) || preference == nullptr || requestedAlgoCount < 1 || heuristicResultsArray == nullptr ||
      returnAlgoCount == nullptr)
    return CUBLAS_STATUS_INVALID_VALUE;
  *returnAlgoCount = 0;
  if (!unsupported(*operationDesc, *Adesc, *Bdesc, *Cdesc, *Ddesc, *preference).empty())
    return CUBLAS_STATUS_NOT_SUPPORTED;
  cublasLtMatmulHeuristicResult_t& r = heuristicResultsArray[0];
  r = cublasLtMatmulHeuristicResult_t{};
  r.algo.data[0] = kAlgoMagic;
  for (int i = 0; i < 4; ++i) r.algo.data[1 + i] = preference->alignment[i];
  r.workspaceSize = 0;
  r.state = CUBLAS_STATUS_SUCCESS;
  r.wavesCount = 1.0f;
  *returnAlgoCount = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t computeDesc, const void* alpha,
                              const void* A, cublasLtMatrixLayout_t Adesc, const void* B,
                              cublasLtMatrixLayout_t Bdesc, const void* beta, const void* C,
                              cublasLtMatrixLayout_t Cdesc, void* D, cublasLtMatrixLayout_t Ddesc,
                              const cublasLtMatmulAlgo_t* algo, void* workspace, size_t workspaceSizeInBytes,
                              cudaStream_t stream) {
  (void)workspace;
  (void)workspaceSizeInBytes;
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (computeDesc == nullptr || alpha == nullptr || beta == nullptr || !valid_layout(Adesc) ||
      !valid_layout(Bdesc) || !valid_layout(Cdesc) || !valid_layout(Ddesc) || algo == nullptr ||
      algo->data[0] != kAlgoMagic)
    return CUBLAS_STATUS_INVALID_VALUE;
  const cublasLtMatmulPreferenceOpaque any{};
  if (!unsupported(*computeDesc, *Adesc, *Bdesc, *Cdesc, *Ddesc, any).empty()) return CUBLAS_STATUS_NOT_SUPPORTED;
  Shape shape;
  if (!shape_of(*computeDesc, *Adesc, *Bdesc, *Cdesc, *Ddesc, &shape).empty()) return CUBLAS_STATUS_INVALID_VALUE;
  // The algorithm was chosen for pointers at least as aligned as the preference said.
  const void* pointers[4] = {A, B, C, D};
  for (int i = 0; i < 4; ++i)
    if (alignment_of(pointers[i]) < algo->data[1 + i]) return CUBLAS_STATUS_INVALID_VALUE;
  const float a = *static_cast<const float*>(alpha), b = *static_cast<const float*>(beta);
  const cublasLtMatmulDescOpaque desc = *computeDesc;
  const cublasLtMatrixLayoutOpaque la = *Adesc, lb = *Bdesc, lc = *Cdesc, ld = *Ddesc;
  const uint64_t m = shape.m, n = shape.n, k = shape.k;
  const bool a_n = desc.transa == CUBLAS_OP_N, b_n = desc.transb == CUBLAS_OP_N;
  if (!device_matrix(A, la, la.rows, la.cols) || !device_matrix(B, lb, lb.rows, lb.cols) ||
      !device_matrix(D, ld, ld.rows, ld.cols) || (b != 0.0f && !device_matrix(C, lc, lc.rows, lc.cols)))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (has_bias(desc.epilogue)) {
    const cublasLtMatrixLayoutOpaque column{ld.type, m, 1, static_cast<int64_t>(std::max<uint64_t>(m, 1))};
    if (!device_matrix(desc.bias, column, m, 1)) return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (has_aux(desc.epilogue)) {
    const cublasLtMatrixLayoutOpaque aux{ld.type, m, n, desc.aux_ld};
    if (!device_matrix(desc.aux, aux, m, n)) return CUBLAS_STATUS_INVALID_VALUE;
  }
  CUstream_st* s = dj::emu::resolve_stream(stream);
  if (s == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  auto op = std::make_unique<dj::emu::Op>();
  op->what = "cublasLtMatmul";
  op->run = [=] {
    // op(A) rows and op(B) columns packed contiguously along k, in fp32.
    std::vector<float> pa(m * k), pb(n * k);
    for (uint64_t i = 0; i < m; ++i)
      for (uint64_t p = 0; p < k; ++p)
        pa[i * k + p] = load(A, la.type, a_n ? i + p * static_cast<uint64_t>(la.ld) : p + i * static_cast<uint64_t>(la.ld));
    for (uint64_t j = 0; j < n; ++j)
      for (uint64_t p = 0; p < k; ++p)
        pb[j * k + p] = load(B, lb.type, b_n ? p + j * static_cast<uint64_t>(lb.ld) : j + p * static_cast<uint64_t>(lb.ld));
    for (uint64_t j = 0; j < n; ++j)
      for (uint64_t i = 0; i < m; ++i) {
        float acc = 0.0f;
        for (uint64_t p = 0; p < k; ++p) acc += pa[i * k + p] * pb[j * k + p];
        float v = a * acc;
        if (b != 0.0f) v += b * load(C, lc.type, i + j * static_cast<uint64_t>(lc.ld));
        if (has_bias(desc.epilogue)) v += load(desc.bias, ld.type, i);
        if (has_aux(desc.epilogue)) store(desc.aux, ld.type, i + j * static_cast<uint64_t>(desc.aux_ld), v);
        if (has_gelu(desc.epilogue)) v = gelu_tanh(v);
        store(D, ld.type, i + j * static_cast<uint64_t>(ld.ld), v);
      }
    return true;
  };
  dj::emu::device(s->device)->enqueue(s, std::move(op));
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"

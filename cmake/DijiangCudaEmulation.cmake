# DIJIANG_CUDA_EMULATION: the CPU emulation of the CUDA runtime (tests/cuda_emulation) that runs the
# kernels of kernels/cuda compiled as C++, so that CI checks them against the CPU reference
# without a GPU. On by default when the tests are built and boost.context (Debian:
# libboost-context-dev) is found. It needs neither nvcc nor a GPU.
find_package(Boost 1.74 QUIET COMPONENTS context)
set(DIJIANG_CUDA_EMULATION_DEFAULT OFF)
if(DIJIANG_TESTS AND TARGET Boost::context)
  set(DIJIANG_CUDA_EMULATION_DEFAULT ON)
endif()
option(DIJIANG_CUDA_EMULATION "Build the CUDA emulation and run the device checks on it (tests)"
       ${DIJIANG_CUDA_EMULATION_DEFAULT})
if(DIJIANG_CUDA_EMULATION AND NOT TARGET Boost::context)
  message(FATAL_ERROR "DIJIANG_CUDA_EMULATION=ON needs boost.context (apt-get install libboost-context-dev)")
endif()
if(DIJIANG_CUDA_EMULATION AND NOT DIJIANG_TESTS)
  message(FATAL_ERROR "DIJIANG_CUDA_EMULATION=ON needs DIJIANG_TESTS=ON (it only builds tests)")
endif()

# Every product dependency comes from a Debian package (launch/setup.sh installs them).
find_package(PkgConfig REQUIRED)
find_package(OpenMP REQUIRED COMPONENTS CXX)
find_package(Threads REQUIRED)
pkg_check_modules(LIBZIP REQUIRED IMPORTED_TARGET libzip)
pkg_check_modules(PLPLOT REQUIRED IMPORTED_TARGET plplot)
pkg_check_modules(UTF8PROC REQUIRED IMPORTED_TARGET libutf8proc)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)
find_package(HDF5 REQUIRED COMPONENTS C)
find_package(fmt REQUIRED)
find_package(spdlog REQUIRED)
find_package(CLI11 REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
find_package(yaml-cpp REQUIRED)

add_library(dijiang_hdf5 INTERFACE)
target_include_directories(dijiang_hdf5 SYSTEM INTERFACE ${HDF5_C_INCLUDE_DIRS} ${HDF5_INCLUDE_DIRS})
target_link_libraries(dijiang_hdf5 INTERFACE ${HDF5_C_LIBRARIES})
target_compile_definitions(dijiang_hdf5 INTERFACE ${HDF5_C_DEFINITIONS} ${HDF5_DEFINITIONS})

if(DIJIANG_MPI STREQUAL "OFF")
  set(DIJIANG_HAVE_MPI OFF)
else()
  if(DIJIANG_MPI STREQUAL "ON")
    find_package(MPI REQUIRED COMPONENTS CXX)
  else()
    find_package(MPI QUIET COMPONENTS CXX)
  endif()
  set(DIJIANG_HAVE_MPI ${MPI_CXX_FOUND})
endif()

# OpenBLAS, its OpenMP build. The program parallelises its own loops with OpenMP; Debian's default
# OpenBLAS (the pthread build) keeps a second pool of spinning threads, and the two pools take
# turns on the cores (1.5-1.7x slower training steps). The OpenMP build runs its GEMMs on the
# program's OpenMP threads instead. pkg-config's openblas.pc and the libopenblas.so.0 in the
# library directory follow Debian's alternatives link, so the build is found in its own directory
# and the executables carry a run path to it (the library's soname is the same in both builds).
# DIJIANG_OPENBLAS_DIR / DIJIANG_OPENBLAS_INCLUDE_DIR name another installation of an OpenMP build.
set(DIJIANG_OPENBLAS_HINT_LIB /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp)
set(DIJIANG_OPENBLAS_HINT_INC /usr/include/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp)
set(DIJIANG_OPENBLAS_DIR "" CACHE PATH "Directory of OpenBLAS's OpenMP build (libopenblas.so)")
set(DIJIANG_OPENBLAS_INCLUDE_DIR "" CACHE PATH "Directory of the OpenMP build's cblas.h")
find_library(DIJIANG_OPENBLAS_LIBRARY NAMES openblas
             PATHS ${DIJIANG_OPENBLAS_DIR} ${DIJIANG_OPENBLAS_HINT_LIB} NO_DEFAULT_PATH)
find_path(DIJIANG_OPENBLAS_CBLAS_DIR cblas.h
          PATHS ${DIJIANG_OPENBLAS_INCLUDE_DIR} ${DIJIANG_OPENBLAS_HINT_INC} NO_DEFAULT_PATH)
if(NOT DIJIANG_OPENBLAS_LIBRARY OR NOT DIJIANG_OPENBLAS_CBLAS_DIR)
  set(DIJIANG_OPENBLAS_OTHERS "")
  foreach(variant pthread serial)
    if(EXISTS /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-${variant})
      string(APPEND DIJIANG_OPENBLAS_OTHERS " Only its ${variant} build is installed "
             "(/usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-${variant}), which is not used.")
    endif()
  endforeach()
  message(FATAL_ERROR "dijiang needs OpenBLAS's OpenMP build (library and cblas.h in "
          "${DIJIANG_OPENBLAS_HINT_LIB} and ${DIJIANG_OPENBLAS_HINT_INC}).${DIJIANG_OPENBLAS_OTHERS} "
          "Install it with: apt-get install libopenblas-openmp-dev (launch/setup.sh does), or point "
          "DIJIANG_OPENBLAS_DIR and DIJIANG_OPENBLAS_INCLUDE_DIR at another OpenMP build.")
endif()
get_filename_component(DIJIANG_OPENBLAS_LIBRARY_DIR "${DIJIANG_OPENBLAS_LIBRARY}" DIRECTORY)
message(STATUS "OpenBLAS (OpenMP build): ${DIJIANG_OPENBLAS_LIBRARY}")
add_library(dijiang_openblas INTERFACE)
target_include_directories(dijiang_openblas SYSTEM INTERFACE ${DIJIANG_OPENBLAS_CBLAS_DIR})
target_link_libraries(dijiang_openblas INTERFACE ${DIJIANG_OPENBLAS_LIBRARY} OpenMP::OpenMP_CXX)
target_link_options(dijiang_openblas INTERFACE "LINKER:-rpath,${DIJIANG_OPENBLAS_LIBRARY_DIR}")

# Decides whether the CUDA backend is built: PROXYATTN_CUDA = AUTO | ON | OFF.
set(PROXYATTN_WITH_CUDA OFF)
if(NOT PROXYATTN_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # sm_80 machine code and PTX (A100, Ada; newer GPUs JIT the PTX) and sm_90a (wgmma, TMA).
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES "80;90a-real" CACHE STRING "CUDA architectures")
    endif()
    enable_language(CUDA)
    set(PROXYATTN_WITH_CUDA ON)
  elseif(PROXYATTN_CUDA STREQUAL "ON")
    message(FATAL_ERROR "PROXYATTN_CUDA=ON but no CUDA compiler was found")
  endif()
endif()
message(STATUS "proxyattn: CUDA backend ${PROXYATTN_WITH_CUDA}")

# ptxas's register-spill report (-Xptxas -warn-spills: 19 warnings a build) is off unless asked
# for (work on the kernels). The spills are known and kept. Where their local loads and stores
# sit (nvdisasm -g of the CUDA 13.0 build, static instructions): the sm90 attention kernel at
# d = 64, 200 of its 222 in the producer and decoder warps (tile scheduler, TMA issue, work
# list: setmaxnreg leaves them 32 registers), 16 in the epilogue and 6 where a consumer starts
# an item or a tile, none in its wgmma / softmax math; at d = 128 and in the sm80 kernel, 14 and
# 6 in the same item and tile bookkeeping; in the estimation, CUB's block radix sort of 32 keys
# a thread (budget heads 26, select 110) and the budget partials' loop state (14 at d = 128,
# under its __launch_bounds__ register cap).
option(PROXYATTN_WARN_SPILLS "Print ptxas's register-spill warnings of the CUDA kernels" OFF)
set(PROXYATTN_PTXAS_WARN_SPILLS "")
if(PROXYATTN_WARN_SPILLS)
  set(PROXYATTN_PTXAS_WARN_SPILLS -Xptxas=-warn-spills)
endif()

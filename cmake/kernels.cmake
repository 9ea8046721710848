# The CPU kernels' instruction-set variants: src/cpu/kernels.cpp compiled again per instruction
# set (kernels_avx2.cpp, kernels_avx512.cpp), the widest the CPU runs picked at run time
# (kernels_dispatch.cpp). A portable x86-64 build (PROXYATTN_NATIVE=OFF, as pip's) has them;
# -march=native has the machine's own, and other processors (aarch64: NEON) their baseline.
set(PROXYATTN_KERNEL_VARIANTS OFF)
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$" AND CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  set(PROXYATTN_KERNEL_VARIANTS ON)
endif()

# proxyattn_add_kernel_variants(<target>): adds the variants to a target holding kernels.cpp and
# kernels_dispatch.cpp; source properties, so call it in the directory that made the target.
function(proxyattn_add_kernel_variants target)
  if(NOT PROXYATTN_KERNEL_VARIANTS)
    return()
  endif()
  set(dir ${PROJECT_SOURCE_DIR}/src/cpu)
  target_sources(${target} PRIVATE ${dir}/kernels_avx2.cpp ${dir}/kernels_avx512.cpp)
  set_source_files_properties(${dir}/kernels_avx2.cpp PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma")
  set_source_files_properties(${dir}/kernels_avx512.cpp PROPERTIES COMPILE_OPTIONS "-mavx512f;-mavx2;-mfma")
  set_source_files_properties(${dir}/kernels_dispatch.cpp PROPERTIES
                              COMPILE_DEFINITIONS "PROXYATTN_KERNELS_AVX2=1;PROXYATTN_KERNELS_AVX512=1")
endfunction()

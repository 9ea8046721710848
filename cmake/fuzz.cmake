# The fuzz target over the C API (tests/fuzz/fuzz_capi.cpp) and its corpus (tests/fuzz/corpus).
#   Every build with tests: fuzz_capi_replay (any compiler) replays the corpus and runs a bounded
#   loop of random mutations (ctest fuzz_capi_replay, label cpu).
#   PROXYATTN_FUZZ=ON (clang, with PROXYATTN_SANITIZE): fuzz_capi, a libFuzzer target over a
#   library built with coverage instrumentation; ctest fuzz_capi_libfuzzer runs it for
#   PROXYATTN_FUZZ_SECONDS over a copy of the corpus (`make sanitize` does both).
# A long run: docs/fuzzing.md.
option(PROXYATTN_FUZZ "Build the libFuzzer target fuzz_capi (clang, with PROXYATTN_SANITIZE)" OFF)
set(PROXYATTN_FUZZ_SECONDS 60 CACHE STRING "Seconds of the fuzz_capi_libfuzzer test")
set(PROXYATTN_FUZZ_REPLAY_RUNS 3000 CACHE STRING "Random mutations of the fuzz_capi_replay test")

set(_fuzz_dir ${PROJECT_SOURCE_DIR}/tests/fuzz)
add_executable(fuzz_capi_replay ${_fuzz_dir}/fuzz_capi.cpp ${_fuzz_dir}/replay_main.cpp)
target_link_libraries(fuzz_capi_replay PRIVATE proxyattn_c_callers)  # tests/cpu/CMakeLists.txt
add_test(NAME fuzz_capi_replay
         COMMAND fuzz_capi_replay -runs=${PROXYATTN_FUZZ_REPLAY_RUNS} -seed=1 ${_fuzz_dir}/corpus/capi
         WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
set_tests_properties(fuzz_capi_replay PROPERTIES LABELS cpu)

if(PROXYATTN_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "PROXYATTN_FUZZ=ON needs clang (libFuzzer): configure with CMAKE_CXX_COMPILER=clang++")
  endif()
  if(NOT PROXYATTN_SANITIZE)
    message(FATAL_ERROR "PROXYATTN_FUZZ=ON needs PROXYATTN_SANITIZE=ON (the sanitizers' runtime takes the coverage)")
  endif()
  # Coverage of the library's own code guides the fuzzer.
  target_compile_options(proxyattn PRIVATE -fsanitize=fuzzer-no-link)
  # The CPU backend's loops without comparison tracing, which took most of an input's time
  # there (the checks, in src/core and src/api, keep it: it helps the fuzzer past them).
  get_target_property(_fuzz_sources proxyattn SOURCES)
  list(FILTER _fuzz_sources INCLUDE REGEX "^src/cpu/")
  set_source_files_properties(${_fuzz_sources} TARGET_DIRECTORY proxyattn PROPERTIES
                              COMPILE_OPTIONS -fno-sanitize-coverage=trace-cmp)
  add_executable(fuzz_capi ${_fuzz_dir}/fuzz_capi.cpp)
  target_compile_options(fuzz_capi PRIVATE -fsanitize=fuzzer)
  target_link_options(fuzz_capi PRIVATE -fsanitize=fuzzer)
  target_link_libraries(fuzz_capi PRIVATE proxyattn_c_callers)
  # New inputs go to a scratch folder; the committed corpus is only read. -timeout: one input
  # slower than 30 s (none takes a second alone) is a finding too, on a loaded CI machine.
  add_test(NAME fuzz_capi_libfuzzer
           COMMAND ${CMAKE_COMMAND} -E env ASAN_OPTIONS=detect_leaks=1
                   $<TARGET_FILE:fuzz_capi> -max_total_time=${PROXYATTN_FUZZ_SECONDS} -timeout=30 -rss_limit_mb=2048
                   -print_final_stats=1 -artifact_prefix=${CMAKE_BINARY_DIR}/fuzz-
                   ${CMAKE_BINARY_DIR}/fuzz-corpus ${_fuzz_dir}/corpus/capi)
  set_tests_properties(fuzz_capi_libfuzzer PROPERTIES LABELS "cpu;fuzz" TIMEOUT 600)
  file(MAKE_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz-corpus)
endif()

# PROXYATTN_SANITIZE: AddressSanitizer and UndefinedBehaviorSanitizer on every target of the
# build (library, tests, command line), with no recovery: the first report ends the process
# and fails its test. `make sanitize` builds this way (with clang) and runs the CPU tests.
# A host-only build: the Python module (loaded by an unsanitized interpreter) and the CUDA
# backend are refused.
option(PROXYATTN_SANITIZE "Build with AddressSanitizer and UndefinedBehaviorSanitizer (no recover)" OFF)
if(PROXYATTN_SANITIZE)
  if(PROXYATTN_PYTHON)
    message(FATAL_ERROR "PROXYATTN_SANITIZE=ON: set PROXYATTN_PYTHON=OFF (an unsanitized interpreter "
                        "cannot load a sanitized module)")
  endif()
  if(PROXYATTN_WITH_CUDA)
    message(FATAL_ERROR "PROXYATTN_SANITIZE=ON: set PROXYATTN_CUDA=OFF (a host-only build)")
  endif()
  add_compile_options(-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g)
  add_link_options(-fsanitize=address,undefined -fno-sanitize-recover=all)
  message(STATUS "proxyattn: AddressSanitizer + UndefinedBehaviorSanitizer, no recover")
endif()

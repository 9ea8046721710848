# The README's two commands, `make demo` and `make test`, set up everything they need on a
# fresh Debian/Ubuntu machine: system packages (scripts/setup-deps), a local venv with the
# pinned Python tools and CUTLASS headers, the CMake build (CUDA when nvcc is found).
# `make test` runs every test of that build, then `make sanitize`.

BUILD ?= build
GENERATOR ?= Ninja
CUDA ?= AUTO
CMAKE_ARGS ?=
DEPS := .deps
SANITIZE_BUILD ?= build-sanitize
FUZZ_SECONDS ?= 60
JOBS ?= $(shell nproc)

.PHONY: all deps configure build demo test sanitize clean

all: build

deps: $(DEPS)/stamp

$(DEPS)/stamp: requirements-dev.txt scripts/setup-deps
	scripts/setup-deps $(DEPS)
	touch $@

configure: $(BUILD)/build.ninja

$(BUILD)/build.ninja: deps CMakeLists.txt
	cmake -S . -B $(BUILD) -G $(GENERATOR) -DPROXYATTN_CUDA=$(CUDA) \
	  -DPROXYATTN_CUTLASS_INCLUDE=$(CURDIR)/$(DEPS)/cutlass/include \
	  -DPROXYATTN_GTEST_SOURCE=$(CURDIR)/$(DEPS)/googletest \
	  -DPROXYATTN_PYTHON=ON -DPython_EXECUTABLE=$(CURDIR)/.venv/bin/python $(CMAKE_ARGS)

build: configure
	cmake --build $(BUILD)

demo: build
	./$(BUILD)/proxyattn demo

test: build
	ctest --test-dir $(BUILD) --output-on-failure
	$(MAKE) sanitize

# The CPU build with AddressSanitizer and UndefinedBehaviorSanitizer, no recover (clang;
# cmake/sanitize.cmake): the CPU tests, the fuzz target's corpus replay, and libFuzzer over the
# C API for FUZZ_SECONDS (cmake/fuzz.cmake, docs/fuzzing.md). Any report fails its test.
sanitize: deps
	cmake -S . -B $(SANITIZE_BUILD) -G $(GENERATOR) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DPROXYATTN_CUDA=OFF \
	  -DPROXYATTN_SANITIZE=ON -DPROXYATTN_FUZZ=ON -DPROXYATTN_FUZZ_SECONDS=$(FUZZ_SECONDS) \
	  -DPROXYATTN_GTEST_SOURCE=$(CURDIR)/$(DEPS)/googletest $(CMAKE_ARGS)
	cmake --build $(SANITIZE_BUILD)
	UBSAN_OPTIONS=print_stacktrace=1 ctest --test-dir $(SANITIZE_BUILD) -L cpu -j $(JOBS) --output-on-failure

clean:
	rm -rf $(BUILD) $(SANITIZE_BUILD)

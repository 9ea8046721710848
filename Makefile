# The README's two commands, `make demo` and `make test`, set up everything they need on a
# fresh Debian/Ubuntu machine: system packages (scripts/setup-deps), a local venv with the
# pinned Python tools and CUTLASS headers, the CMake build (CUDA when nvcc is found).

BUILD ?= build
GENERATOR ?= Ninja
CUDA ?= AUTO
CMAKE_ARGS ?=
DEPS := .deps

.PHONY: all deps configure build demo test clean

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

clean:
	rm -rf $(BUILD)

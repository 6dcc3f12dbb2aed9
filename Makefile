# sidetrace — the two commands a new user needs are `make run` and `make test`.
SHELL := /bin/bash
JOBS ?= $(shell nproc)
BUILD ?= build/release
VAR ?= $(CURDIR)/var
CMAKE_FLAGS ?=

.PHONY: all deps build run test bench test-sanitize format clean

all: build

deps:
	@bash scripts/install-deps.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j$(JOBS)

# Runs the agent in the foreground on its embedded defaults, with its sockets
# and data under ./var and finished traces printed to stdout.
run: build
	@mkdir -p $(VAR)
	SIDETRACE_DATA_DIR=$(VAR)/data \
	SIDETRACE_LISTEN_UNIX_STREAM=$(VAR)/agent.sock \
	SIDETRACE_LISTEN_UNIX_DGRAM=$(VAR)/agent.dgram.sock \
	$(BUILD)/agent/sidetrace agent --print

# Installs dependencies, builds, and runs every test.
test: build
	ctest --test-dir $(BUILD) -j$(JOBS) --output-on-failure --timeout 600
	@if [ -f tests/run-sdk-tests.sh ]; then bash tests/run-sdk-tests.sh $(BUILD); fi

bench: build
	@bash bench/run.sh $(BUILD)

test-sanitize: deps
	cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSIDETRACE_SANITIZE=ON
	cmake --build build/asan -j$(JOBS)
	ctest --test-dir build/asan -j$(JOBS) --output-on-failure --timeout 900

format:
	git ls-files '*.cpp' '*.h' | xargs clang-format -i

clean:
	rm -rf build

# sidetrace — the two commands a new user needs are `make run` and `make test`.
SHELL := /bin/bash
JOBS ?= $(shell nproc)
BUILD ?= build/release
VAR ?= $(CURDIR)/var
CMAKE_FLAGS ?=

.PHONY: all deps build run test bench test-sanitize fuzz format clean install package

all: build

deps:
	@bash scripts/install-deps.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j$(JOBS)

# Runs the agent in the foreground on its embedded defaults, with its sockets
# and data under ./var and finished traces printed to stdout.
run: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j$(JOBS) --target sidetrace
	@mkdir -p $(VAR)
	SIDETRACE_DATA_DIR=$(VAR)/data \
	SIDETRACE_LISTEN_UNIX_STREAM=$(VAR)/agent.sock \
	SIDETRACE_LISTEN_UNIX_DGRAM=$(VAR)/agent.dgram.sock \
	$(BUILD)/agent/sidetrace agent --print

# Installs dependencies, builds, and runs every test.
test: build
	ctest --test-dir $(BUILD) -j$(JOBS) --output-on-failure --timeout 600
	bash tests/run-sdk-tests.sh $(BUILD)
	bash tests/ui/run.sh $(BUILD)
	bash tests/fuzz/run.sh 15

bench: build
	@bash bench/run.sh $(BUILD)

test-sanitize: deps
	cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSIDETRACE_SANITIZE=ON
	cmake --build build/asan -j$(JOBS)
	ctest --test-dir build/asan -j$(JOBS) --output-on-failure --timeout 900

# The libFuzzer harnesses (tests/fuzz), five minutes each; make test runs them briefly.
fuzz: deps
	bash tests/fuzz/run.sh 300

PREFIX ?= /usr/local
install: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=$(PREFIX) $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j$(JOBS) --target sidetrace
	cmake --install $(BUILD)

# A Debian package of the agent (build/pkg/*.deb).
package: deps
	cmake -S . -B build/pkg -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr \
	  -DSIDETRACE_BUILD_TESTS=OFF -DSIDETRACE_BUILD_BENCH=OFF
	cmake --build build/pkg -j$(JOBS) --target sidetrace
	cd build/pkg && cpack -G DEB

format:
	git ls-files '*.cpp' '*.h' | xargs clang-format -i

clean:
	rm -rf build

# sidetrace — the two commands a new user needs are `make run` and `make test`.
SHELL := /bin/bash
JOBS ?= $(shell nproc)
BUILD ?= build/release
VAR ?= $(CURDIR)/var
CMAKE_FLAGS ?=

.PHONY: all deps build run test bench bench-compare soak test-sanitize test-arm64 fuzz format clean install package

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
	bash tests/system/run.sh $(BUILD)

bench: build
	@bash bench/run.sh $(BUILD)

# sidetrace and syslog-ng side by side on the same durable-delivery job,
# including a 60 s upstream outage (docs/benchmarks.md).
bench-compare: build
	@bash bench/compare/run.sh

# The reliability suite's long form (tests/system): 20 kill -9 cycles, long
# outages, a minute of floods per transport, and 200 power cuts of the store
# (buffer/power_cut_test.cpp); make test runs the short forms.
soak: build
	SIDETRACE_POWER_CUTS=200 $(BUILD)/buffer/buffer_power_cut_test
	SIDETRACE_SOAK=1 bash tests/system/run.sh $(BUILD)

# The whole ctest suite under ASan+UBSan (build/asan) and under TSan (build/tsan);
# tests that spawn the agent run the sanitized binary. Both suites run even if
# the first fails; the target fails if either did. TSan reads its suppressions
# for the uninstrumented Debian libraries from tests/sanitize/tsan.supp.
SANITIZE_JOBS ?= 2
# -O1: the optimisation level the sanitizers are designed for, and a much
# shorter build than -O2.
SANITIZE_CMAKE := -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g -DNDEBUG" \
                  -DSIDETRACE_BUILD_BENCH=OFF $(CMAKE_FLAGS)
SANITIZE_CTEST := ctest -j$(SANITIZE_JOBS) --output-on-failure --timeout 900
test-sanitize: deps
	cmake -S . -B build/asan $(SANITIZE_CMAKE) -DSIDETRACE_SANITIZE=ON -DSIDETRACE_TSAN=OFF
	cmake --build build/asan -j$(JOBS)
	cmake -S . -B build/tsan $(SANITIZE_CMAKE) -DSIDETRACE_TSAN=ON -DSIDETRACE_SANITIZE=OFF
	cmake --build build/tsan -j$(JOBS)
	@rc=0; \
	echo "== ASan+UBSan: build/asan"; \
	ASAN_OPTIONS=detect_leaks=1:check_initialization_order=1:strict_init_order=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(SANITIZE_CTEST) --test-dir build/asan || rc=1; \
	echo "== TSan: build/tsan"; \
	TSAN_OPTIONS=suppressions=$(CURDIR)/tests/sanitize/tsan.supp:second_deadlock_stack=1 \
	  $(SANITIZE_CTEST) --test-dir build/tsan || rc=1; \
	exit $$rc

# Cross-builds for arm64 (Debian's cross toolchain and arm64 packages) and runs
# the unit tests under qemu-user; see scripts/test-arm64.sh.
test-arm64:
	@bash scripts/test-arm64.sh

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

# Thin wrapper over CMake. The two commands a new machine needs: `make run` and `make test`.
BUILD      ?= build
TEST_BUILD ?= build-test
FUZZ_BUILD ?= build-fuzz
JOBS       ?= $(shell nproc)
FUZZ_SECONDS ?= 20
FUZZ_LONG_SECONDS ?= 600

.PHONY: all deps build run test unit integration fuzz-build fuzz-smoke fuzz bench format clean

all: build

deps:
	@bash scripts/install-deps.sh build

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

run: build
	@bash scripts/run-dev.sh $(BUILD)/switchboard

test-deps:
	@bash scripts/install-deps.sh build test

test-build: test-deps
	@cmake -S . -B $(TEST_BUILD) -DCMAKE_BUILD_TYPE=Debug -DSB_SANITIZE=ON -DSB_TESTS=ON >/dev/null
	@cmake --build $(TEST_BUILD) -j $(JOBS)

fuzz-build: test-deps
	@CC=clang cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=Debug -DSB_FUZZ=ON -DSB_SANITIZE=ON >/dev/null
	@cmake --build $(FUZZ_BUILD) -j $(JOBS)

# Every tier: cmocka unit tests and node integration tests under ctest (ASan+UBSan build),
# then each fuzz target for a short run over its committed corpus.
test: test-build fuzz-build
	@cd $(TEST_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		ctest --output-on-failure -j $(JOBS)
	@bash scripts/fuzz.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

unit: test-build
	@cd $(TEST_BUILD) && ctest --output-on-failure -L unit

integration: test-build
	@cd $(TEST_BUILD) && ctest --output-on-failure -L integration

fuzz: fuzz-build
	@bash scripts/fuzz.sh $(FUZZ_BUILD) $(FUZZ_LONG_SECONDS)

bench: build
	@bash scripts/install-deps.sh build bench
	@bash bench/run.sh $(BUILD)/switchboard

format:
	@clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD) $(TEST_BUILD) $(FUZZ_BUILD)

# The two commands: `make run` and `make test`. Everything else is a step of them.
BUILD      ?= build
JOBS       ?= 2
BUILD_TYPE ?= RelWithDebInfo
ARGS       ?=
FUZZ_SECONDS ?= 30

CMAKE_CONFIGURE = cmake -S . -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DCKPTD_WERROR=ON

.PHONY: all deps build test unit-test sanitize fuzz run bench clean format

all: build

deps:
	@scripts/install-deps.sh

build: deps
	@$(CMAKE_CONFIGURE) -B $(BUILD) >/dev/null
	@ninja -C $(BUILD) -j$(JOBS)

# Every suite: the unit tests under AddressSanitizer + UBSan, a bounded
# libFuzzer run of the GGUF reader, then unit, CLI and interop tests (ctest,
# last, so its summary closes the output).
test: build
	@$(MAKE) --no-print-directory sanitize
	@$(MAKE) --no-print-directory fuzz
	@cd $(BUILD) && ctest --output-on-failure -j$(JOBS)

sanitize:
	@$(CMAKE_CONFIGURE) -B $(BUILD)-asan -DCKPTD_SANITIZE=address,undefined >/dev/null
	@ninja -C $(BUILD)-asan -j$(JOBS) gguf_tests env_tests
	@cd $(BUILD)-asan && ctest --output-on-failure -j$(JOBS) -L unit

fuzz:
	@scripts/run-fuzz.sh $(BUILD) $(FUZZ_SECONDS)

run: build
	@if [ -x $(BUILD)/daemon/ckptd ]; then \
	  exec $(BUILD)/daemon/ckptd $(ARGS); \
	else \
	  echo "ckptd: the daemon is not part of this build yet (issue #3);"; \
	  echo "  ckptctl is at $(BUILD)/client/cli/ckptctl: try '$(BUILD)/client/cli/ckptctl inspect FILE.gguf'"; \
	  exit 1; \
	fi

bench: build
	@$(BUILD)/bench/gguf_bench $(ARGS)

format:
	@git ls-files '*.cc' '*.h' '*.cpp' | xargs clang-format -i

clean:
	rm -rf $(BUILD) $(BUILD)-asan $(BUILD)-fuzz

# The two commands: `make run` and `make test`. Everything else is a step of them.
BUILD      ?= build
JOBS       ?= 2
BUILD_TYPE ?= RelWithDebInfo
ARGS       ?=
FUZZ_SECONDS ?= 300
# Unit suites run again under ASan + UBSan (the black-box suites run the
# normal build's binaries). The client suite (restore) needs the protobuf
# code built under ASan too, a few minutes more on 2 cores, so it is left to
# `make sanitize SANITIZED="... client"` to keep make test within budget.
SANITIZED  = gguf export env storage policy config scheduler tier query http
FUZZERS    = gguf_reader_fuzz request_fuzz arena_request_fuzz export_profile_fuzz config_fuzz

comma      := ,
PREFIX     ?= /usr
# Unity builds (CMake batches of a target's sources compiled as one file):
# about half the compile time from a cold cache, so `make test` uses them;
# an edit then recompiles its whole batch, so by hand they are off.
UNITY      ?= OFF
CMAKE_CONFIGURE = cmake -S . -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DCKPTD_WERROR=ON \
                  -DCMAKE_INSTALL_PREFIX=$(PREFIX) -DCMAKE_UNITY_BUILD=$(UNITY)
# The sanitizer trees: clang at -O0 with line tables (file:line in every
# report). GCC took 38 s for one TU under ASan + UBSan at -O2 -g, clang 13 at
# -O1 and about 7 at -O0 (docs/testing.md); the suites run in seconds either way.
SAN_CONFIGURE = cmake -S . -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=None \
                -DCMAKE_CXX_FLAGS="-O0 -gline-tables-only" -DCKPTD_WERROR=ON \
                -DCMAKE_UNITY_BUILD=$(UNITY)
ASAN_CONFIGURE = $(SAN_CONFIGURE) -B $(BUILD)-asan -DCKPTD_SANITIZE=address,undefined -DCKPTD_FUZZ=ON

.PHONY: deb deb-test all deps build test unit-test lint sanitize sanitize-daemon tsan tsan-unit fuzz fuzz-run soak run bench clean format install

all: build

deps:
	@scripts/install-deps.sh

build: deps
	@$(CMAKE_CONFIGURE) -B $(BUILD) >/dev/null
	@ninja -C $(BUILD) -j$(JOBS)

# Every suite (scripts/test.sh): the build, then ctest (unit, black-box, CLI,
# interop and real-service tests), beside lint (clang-format, clang-tidy,
# clang's thread-safety analysis), the unit tests under ASan + UBSan, the
# threaded unit suites under TSan and a bounded libFuzzer run of each parser
# (15 s each; `make fuzz` runs them FUZZ_SECONDS each). It ends with each
# phase's time and ctest's summary.
# Lane B of scripts/test.sh runs LINT_CMD, `$(MAKE) lint`, beside the build.
test:
	@LINT_CMD="$(MAKE) lint --no-print-directory" scripts/test.sh $(BUILD) $(JOBS) 15

# Lint configures a tree of its own (BUILD-lint): it needs no build first.
lint: deps
	@scripts/lint.sh $(BUILD) $(JOBS)

# One tree for ASan + UBSan and the fuzzers (they share its objects).
sanitize:
	@$(ASAN_CONFIGURE) >/dev/null
	@ninja -C $(BUILD)-asan -j$(JOBS) $(addsuffix _tests,$(SANITIZED)) $(FUZZERS) gguf_fixture_writer
	@set -e; for t in $(SANITIZED); do \
	  echo "sanitize: $$t"; $(BUILD)-asan/tests/$$t/$${t}_tests --gtest_brief=1; done

# The black-box daemon suites against an ASan + UBSan daemon (slower; not in `make test`).
sanitize-daemon:
	@$(ASAN_CONFIGURE) >/dev/null
	@ninja -C $(BUILD)-asan -j$(JOBS) daemon_tests shm_tests shm_trainer ckptd ckptctl gguf_fixture_writer
	@$(BUILD)-asan/tests/integration/daemon_tests --gtest_brief=1
	@$(BUILD)-asan/tests/integration/shm_tests --gtest_brief=1

# ThreadSanitizer (tests/tsan.supp: Debian's uninstrumented libraries).
# tsan-unit, in `make test`: the threaded unit suites that need no gRPC
# build (env's write-behind queue and hash worker, storage). tsan: those,
# the client's copier and both black-box suites against a TSan daemon; slow
# (5-15x) enough on 2 cores that their timeouts can trip, so it is run by
# hand, not in CI.
TSAN_SUITES = env storage
TSAN_ENV = TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$(CURDIR)/tests/tsan.supp"
tsan-unit:
	@$(SAN_CONFIGURE) -B $(BUILD)-tsan -DCKPTD_SANITIZE=thread >/dev/null
	@ninja -C $(BUILD)-tsan -j$(JOBS) $(addsuffix _tests,$(TSAN_SUITES))
	@set -e; for t in $(TSAN_SUITES); do echo "tsan: $$t"; \
	  $(TSAN_ENV) $(BUILD)-tsan/tests/$$t/$${t}_tests --gtest_brief=1; done

tsan: tsan-unit
	@ninja -C $(BUILD)-tsan -j$(JOBS) client_tests daemon_tests shm_tests shm_trainer ckptd ckptctl \
	  gguf_fixture_writer
	@$(TSAN_ENV) $(BUILD)-tsan/tests/client/client_tests --gtest_brief=1
	@$(TSAN_ENV) $(BUILD)-tsan/tests/integration/daemon_tests --gtest_brief=1
	@$(TSAN_ENV) $(BUILD)-tsan/tests/integration/shm_tests --gtest_brief=1

fuzz:
	@$(ASAN_CONFIGURE) >/dev/null
	@ninja -C $(BUILD)-asan -j$(JOBS) $(FUZZERS) gguf_fixture_writer
	@scripts/run-fuzz.sh $(BUILD) $(FUZZ_SECONDS)
print-sanitized:
	@echo $(SANITIZED)

# The run alone, on targets `make sanitize` built.
fuzz-run:
	@scripts/run-fuzz.sh $(BUILD) $(FUZZ_SECONDS)

# The soaks at length (`make test` runs each shorter): SOAK_KILLS SIGKILLs
# of the daemon during continuous saves over every path (50 in make test),
# TRAINER_KILLS trainers SIGKILLed right after a shared-memory save returns
# (100), and POWER_CUTS power cuts of powercut_fs, the FUSE file system that
# forgets what was never synced, under the real daemon (100; root and
# /dev/fuse), each followed by the invariant checks.
SOAK_KILLS ?= 1000
TRAINER_KILLS ?= 1000
POWER_CUTS ?= 1000
soak: build
	@CKPTD_SOAK_KILLS=$(SOAK_KILLS) CKPTD_TRAINER_KILLS=$(TRAINER_KILLS) \
	  $(BUILD)/tests/integration/shm_tests --gtest_filter='CrashSoak.*'
	@CKPTD_POWER_CUTS=$(POWER_CUTS) $(BUILD)/tests/powercut/powercut_tests

run: build
	@echo "ckptd: dev config: runs under ./ckpt-runs, socket unix:./ckpt-runs/ckptd.sock (Ctrl-C stops)."
	@echo "Status page: http://127.0.0.1:9477/  (JSON under /v1, Prometheus at /metrics)"
	@echo "Try it from another shell:"
	@echo "  $(BUILD)/examples/ckptd_example_trainer --run demo --steps 200 --every 50   # C++; again: it resumes"
	@echo "  $(BUILD)/client/cli/ckptctl runs; $(BUILD)/client/cli/ckptctl ls demo; $(BUILD)/client/cli/ckptctl latest demo"
	@echo "  PYTHONPATH=$(BUILD)/python/lib /usr/bin/python3 examples/quickstart.py   # PyTorch; again: it resumes"
	@exec $(BUILD)/daemon/ckptd $(ARGS)

bench: build
	@scripts/install-deps.sh --bench
	@$(BUILD)/bench/gguf_bench $(filter --quick,$(ARGS))
	@/usr/bin/python3 bench/run_bench.py --build $(BUILD) $(ARGS)
	@/usr/bin/python3 bench/stream_bench.py --build $(BUILD) $(if $(filter --quick,$(ARGS)),--mib 512,)
	@/usr/bin/python3 bench/restore_bench.py --build $(BUILD) $(if $(filter --quick,$(ARGS)),--mib 256$(comma)1024 --rounds 3,)
	@/usr/bin/python3 bench/first_save_bench.py --build $(BUILD) $(if $(filter --quick,$(ARGS)),--mib 256$(comma)1024,)
	@/usr/bin/python3 bench/export_bench.py --build $(BUILD) $(if $(filter --quick,$(ARGS)),--mib 256 --rounds 3,)
	@/usr/bin/python3 bench/tier_bench.py --build $(BUILD) $(if $(filter --quick,$(ARGS)),--mib 256 --rounds 2,)
	@/usr/bin/python3 bench/peer_bench.py --build $(BUILD) $(if $(filter --quick,$(ARGS)),--mib 256 --rounds 2,)
	@/usr/bin/python3 bench/tier_stall_bench.py --build $(BUILD) $(if $(filter --quick,$(ARGS)),--rounds 3 --auto-seconds 20,)
	@/usr/bin/python3 bench/finetune_bench.py --build $(BUILD) $(if $(filter --quick,$(ARGS)),--mib 128 --steps 4,)

# Debian packages of the built tree (BUILD/deb, lintian-checked), and their
# test in a clean Debian 12 root (tests/deb/deb_test.sh; root, network).
deb: build
	@scripts/make-deb.sh $(BUILD)

deb-test: build
	@tests/deb/deb_test.sh . $(BUILD)

format:
	@git ls-files '*.cc' '*.h' '*.cpp' | xargs clang-format -i

clean:
	rm -rf $(BUILD) $(BUILD)-asan $(BUILD)-tsan

install: build
	@cmake --install $(BUILD)

# Two commands do all set-up on a fresh Debian/Ubuntu machine (as root):
#   make run    install, then run the daemon on the built-in defaults
#   make test   install, then lint, type-check and run every test
.PHONY: setup setup-test run test lint bench clean

VENV := .venv
BIN := $(VENV)/bin
RUN_ARGS ?=

setup:
	./scripts/setup.sh

setup-test:
	./scripts/setup.sh --test

run: setup
	@echo "egresswatch is installed at $(CURDIR)/$(BIN)/egresswatch (not on PATH)." >&2
	@echo "While it runs, in another terminal: sudo $(CURDIR)/$(BIN)/egresswatch events -f" >&2
	@echo "  (also: egresswatch servers, egresswatch doctor; Ctrl-C stops the daemon)" >&2
	$(BIN)/egresswatch run $(RUN_ARGS)

lint: setup-test
	$(BIN)/ruff check egresswatch tests bench
	$(BIN)/ruff format --check egresswatch tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

bench: setup-test
	$(BIN)/python bench/replay_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

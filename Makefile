# The one entry point for humans and CI. Each target installs what it needs first.
SHELL := /bin/bash
export PATH := $(HOME)/.local/bin:$(PATH)
UV_RUN := uv run --locked

.PHONY: setup up test lint fmt bench status help

help:  # List the targets
	@grep -E '^[a-z]+:.*#' Makefile | sed 's/:.*#/\t/'

setup:  # Install uv and the workspace, start PostgreSQL and RabbitMQ if they are down
	@scripts/ensure-infrastructure.sh
	@uv sync --locked --all-packages --quiet

up: setup  # Migrate, then run every service and simulator (Ctrl-C stops them all)
	$(UV_RUN) gridloop up

test: setup  # Run every test against the real broker and database
	$(UV_RUN) pytest -q

lint: setup  # ruff, mypy --strict, import-linter
	$(UV_RUN) ruff check .
	$(UV_RUN) ruff format --check libs services tools
	$(UV_RUN) mypy libs/common/src services/*/src tools/*/src
	$(UV_RUN) lint-imports

fmt: setup  # Format and autofix
	$(UV_RUN) ruff format libs services tools tests bench
	$(UV_RUN) ruff check --fix .

bench: setup  # Run the benchmarks; figures are printed and written to bench/results/
	@command -v wrk >/dev/null 2>&1 || { echo "installing wrk (bench/commands.py's load generator)"; \
		apt-get install -y -qq wrk >/dev/null || { echo "wrk is missing: apt-get install wrk"; exit 1; }; }
	@for script in bench/*.py; do echo "== $$script"; $(UV_RUN) python $$script || exit 1; done

status:  # Health of every service, queue depths and dead letters
	$(UV_RUN) gridloop status

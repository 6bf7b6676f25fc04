# The two commands a newcomer needs:  make demo   and   make test
SHELL := /bin/bash
export PATH := $(HOME)/.local/bin:$(PATH)
PYTEST_WORKERS ?= 2

.PHONY: demo test lint unit serve migration bench

demo:  ## install everything, build a demo database with synthetic data, serve it
	@scripts/setup
	uv run huren demo

test:  ## install everything and run the whole suite: lint, types, layers, tests
	@scripts/setup --test
	$(MAKE) --no-print-directory lint
	uv run pytest -n $(PYTEST_WORKERS) -p no:cacheprovider

lint:
	uv run ruff check src tests bench
	uv run ruff format --check src tests bench
	uv run mypy
	uv run mypy tests
	uv run lint-imports

serve:
	uv run huren db upgrade && uv run huren serve

migration:  ## before the first release: regenerate the single initial migration
	scripts/regen-initial-migration

bench:
	uv run huren bench

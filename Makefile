# The two commands for a fresh machine: `make demo` and `make test`. Each creates .venv and installs itself.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-unit test-scale lint bench chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# make demo KAFKA=apache: the demo on Apache Kafka (Java 17+ and Maven) instead of the embedded broker.
demo: $(STAMP)
	$(BIN)/cloudbill demo $(if $(KAFKA),--kafka $(KAFKA))

# The suite on TEST_WORKERS pytest-xdist workers (each its own broker and PostgreSQL; the e2e tests share one
# worker, tests/conftest.py). TEST_WORKERS=0 runs it in this process, one test after another.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# The full-size variants of the scale tests (e.g. 50 invoices x 500 lines and a 20,000-line invoice, both brokers).
test-scale: $(STAMP)
	$(BIN)/pytest -m scale $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

chaos: $(STAMP)
	$(BIN)/cloudbill chaos --seed $(or $(SEED),1) --out .cloudbill/chaos-$(or $(SEED),1).json $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

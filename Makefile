# afterbell: `make run` (set-up + one nightly cycle on the embedded default) and `make test`.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-afterbell
WHEELS := $(wildcard /opt/wheels)
UV_FLAGS := --python $(BIN)/python $(if $(WHEELS),--find-links $(WHEELS),)
export AFTERBELL_HOME ?= $(CURDIR)/.afterbell
PYTEST_ARGS ?=

.PHONY: setup run test test-fast lint lock airflow-ui mlflow-ui serve clean-state help

help:
	@echo "make run         set-up, then one nightly cycle on the embedded default (real data)"
	@echo "make test        set-up, then every test"
	@echo "make airflow-ui  Airflow UI on http://127.0.0.1:8080 (login: see its log line)"
	@echo "make mlflow-ui   MLflow UI on http://127.0.0.1:5000"
	@echo "make serve       serve the champion on http://127.0.0.1:8000"
	@echo "make lint        ruff + mypy"

setup: $(STAMP)

# The venv is rebuilt only when the lock file or the package metadata change.
$(STAMP): requirements/lock.txt setup.cfg pyproject.toml
	@echo "[afterbell] installing the locked environment into $(VENV) (first time: a few minutes)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip --version >/dev/null 2>&1 || $(BIN)/python -m ensurepip >/dev/null
	@test -x $(BIN)/uv || $(BIN)/python -m pip install -q --disable-pip-version-check uv==0.13.8
	@# --compile-bytecode: every process of the cycle (Airflow task, stage, test subprocess)
	@# would otherwise compile its imports anew where PYTHONDONTWRITEBYTECODE is set (~10 s
	@# CPU for torch, lightning, mlflow, feast, GX, airflow); uv compiles site-packages once.
	$(BIN)/uv pip install -q $(UV_FLAGS) --compile-bytecode -r requirements/lock.txt
	$(BIN)/uv pip install -q $(UV_FLAGS) --no-deps -e .
	@# setuptools leaves a copy of the metadata in the checkout; on sys.path it would register
	@# the Airflow plugin (entry point airflow.plugins) a second time.
	@rm -rf afterbell.egg-info
	@touch $(STAMP)

run: setup
	$(BIN)/afterbell run

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

lock:
	$(BIN)/uv pip compile requirements/requirements.in --python 3.11 \
	  $(if $(WHEELS),--find-links $(WHEELS),) --no-header -o requirements/lock.txt

airflow-ui: setup
	@$(BIN)/afterbell init >/dev/null
	@. $(AFTERBELL_HOME)/env.sh; trap 'kill 0' EXIT; \
	  airflow dag-processor >$(AFTERBELL_HOME)/airflow/dag-processor.log 2>&1 & \
	  airflow scheduler >$(AFTERBELL_HOME)/airflow/scheduler.log 2>&1 & \
	  airflow triggerer >$(AFTERBELL_HOME)/airflow/triggerer.log 2>&1 & \
	  echo "[afterbell] Airflow UI on http://127.0.0.1:8080 - user admin, password in" \
	       "$(AFTERBELL_HOME)/airflow/simple_auth_manager_passwords.json.generated"; \
	  airflow api-server --host 127.0.0.1 --port 8080

mlflow-ui: setup
	@. mlflow/server.env && $(BIN)/mlflow server \
	  --backend-store-uri "sqlite:///$(AFTERBELL_HOME)/mlflow/mlflow.db" \
	  --default-artifact-root "$(AFTERBELL_HOME)/mlflow/artifacts" \
	  --host "$$MLFLOW_HOST" --port "$$MLFLOW_PORT" --workers "$$MLFLOW_WORKERS"

serve: setup
	$(BIN)/afterbell serve

clean-state:
	rm -rf $(AFTERBELL_HOME)

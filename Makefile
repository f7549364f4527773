# Two commands on a fresh machine: `make test` and `make run` (each creates .venv/ when missing).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is installed first, on its own line, so a machine with a local wheel (or a CPU index) can pick it:
#   make install TORCH="torch torchvision --index-url https://download.pytorch.org/whl/cpu"
TORCH  ?= torch==2.14.1 torchvision==0.29.1
PROFILE ?= cpu
# Real data samples for tests (skipped when absent); CI sets the same.
NBM_SHARED_DATA ?= $(abspath ../shared/data)
export NBM_SHARED_DATA
# A local mirror tried before the public download URLs (a folder or URL prefix; several separated by ':').
# ../shared/data holds the official Omniglot zips, so `make run` trains notebook 05 on real Omniglot offline.
NBM_MIRROR ?= $(abspath ../shared/data)
export NBM_MIRROR

.PHONY: install test run bench smoke browser clean help

help:
	@echo "make install   create $(VENV)/ and install the project with its test, rl, bench and sweep extras"
	@echo "make test      run the tests (pytest), including every notebook in the smoke profile"
	@echo "make run       run the whole notebook suite in the '$(PROFILE)' profile on offline data"
	@echo "make bench     run benchmarks/ and write benchmarks/results.json"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test,rl,bench,sweep]"
	touch $@

# Debian's chromium for the explorer's browser test (the test skips, saying why, where it cannot be had).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium not installed: the browser test will be skipped"; }

test: install browser
	$(PY) -m pytest

run: install
	$(PY) -m nbmodule.suite --profile $(PROFILE) $(if $(OUT),--out $(OUT),)

smoke: install
	$(PY) -m nbmodule.suite --profile smoke $(if $(OUT),--out $(OUT),)

bench: install
	$(PY) benchmarks/run.py

clean:
	rm -rf runs/ test-artifacts/ .pytest_cache

# Two commands set everything up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTEST_ARGS ?= -q

.PHONY: demo test venv data results clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# Fashion-MNIST ships as a Debian package; install it when missing and we may.
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || (apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) \
	      && echo "installed dataset-fashion-mnist"; \
	  else echo "warning: /usr/share/datasets/fashion-mnist missing; run: sudo apt-get install dataset-fashion-mnist" >&2; fi; \
	fi

test: venv data
	$(PY) -m pytest $(PYTEST_ARGS)

demo: venv data
	$(VENV)/bin/mdamerge bench --suite tasks8 --methods data-free

results: venv data
	$(PY) -m mdamerge.evaluation.results

clean:
	rm -rf $(VENV) .pytest_cache

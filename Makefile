# Two commands set everything up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTEST_ARGS ?= -q

.PHONY: demo test venv data results results-base clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# Fashion-MNIST ships as a Debian package, as do the text benchmark's sources (WordNet, fortunes
# in 8 languages, the King James Bible); install them when missing and we may.
TEXT_DATA := wordnet-base fortunes fortunes-de fortunes-es fortunes-it fortunes-br fortunes-cs fortunes-pl fortunes-eo bible-kjv bible-kjv-text
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || (apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) \
	      && echo "installed dataset-fashion-mnist" \
	      || echo "warning: could not install dataset-fashion-mnist (its tests will skip)" >&2; \
	  else echo "warning: /usr/share/datasets/fashion-mnist missing; run: sudo apt-get install dataset-fashion-mnist" >&2; fi; \
	fi
	@if ! dpkg -s $(TEXT_DATA) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq $(TEXT_DATA) >/dev/null 2>&1 || (apt-get update -qq >/dev/null && apt-get install -y -qq $(TEXT_DATA) >/dev/null)) \
	      && echo "installed the text benchmark's Debian packages" \
	      || echo "warning: could not install $(TEXT_DATA) (the text tests will skip)" >&2; \
	  else echo "warning: text benchmark data missing; run: sudo apt-get install $(TEXT_DATA)" >&2; fi; \
	fi

test: venv data
	$(PY) -m pytest $(PYTEST_ARGS)

demo: venv data
	$(VENV)/bin/mdamerge bench --suite tasks8 --methods data-free

results: venv data
	$(PY) -m mdamerge.textzoo.results
	$(PY) -m mdamerge.evaluation.results

# The scale trend (docs/scale_trend.md): tasks8 on the small and the 2x wider base backbone. Builds
# the base zoo (CACHE/zoo-base) first, which alone used 31 CPU-minutes (75 min wall on a shared core), so it is not in `results`.
results-base: venv data
	$(PY) benchmarks/scale_trend.py --steps 100 --threads 1
	$(PY) -m mdamerge.evaluation.results --render-only

clean:
	rm -rf $(VENV) .pytest_cache

# The project's front door; CI runs the same commands (see .ci/run).
PY ?= python

.PHONY: install test lint annotate bench clean

install:
	pip install -e '.[test,dev]'

test:
	pytest

lint:
	ruff check proxy tests bench
	cython-lint proxy/*.pyx

annotate:
	mkdir -p build
	cython -a -3 proxy/_core.pyx -o build/_core.c
	cython -a -3 proxy/_http.pyx -o build/_http.c
	@echo "see build/_core.html and build/_http.html"

bench:
	$(PY) -m bench overhead --quick
	$(PY) -m bench overload --quick

clean:
	rm -rf build dist *.egg-info proxy/*.so proxy/*.c proxy/*.html

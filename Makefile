# The project's front door; CI runs the same commands (see .ci/run).
PY ?= python

.PHONY: install test lint annotate bench clean

install:
	pip install -e '.[test,dev]'

test:
	pytest

lint:
	ruff check proxy tests bench
	cython-lint proxy/*.pyx proxy/*.pxd

annotate:
	mkdir -p build
	for m in _core _heads _http; do \
		cython -a -3 -I . proxy/$$m.pyx -o build/$$m.c || exit 1; done
	for m in client upstream target; do \
		cython -a -3 -I . -X annotation_typing=False \
			proxy/$$m.py -o build/$$m.c || exit 1; done
	@echo "see build/*.html"

bench:
	$(PY) -m bench overhead --quick
	$(PY) -m bench overload --quick

clean:
	rm -rf build dist *.egg-info proxy/*.so proxy/*.c proxy/*.html

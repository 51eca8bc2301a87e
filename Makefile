# The README's two commands are `make run` and `make test`; everything else is a helper.
.PHONY: setup run test lint pytest bench bench-quick screenshots package install uninstall clean

PROFILE ?= default
PY := .venv/bin/python

setup:
	@scripts/bootstrap.sh

run: setup
	$(PY) scripts/run_local.py --profile $(PROFILE)

test: setup lint pytest

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	.venv/bin/lint-imports

pytest:
	$(PY) -m pytest

bench: setup
	$(PY) -m bench

bench-quick: setup
	$(PY) -m bench --quick

screenshots: setup
	$(PY) -m scripts.screenshots --out build/screenshots

package: setup
	$(PY) -m PyInstaller --noconfirm --log-level WARN --distpath packaging/dist \
		--workpath packaging/build packaging/cipherline.spec

install: package
	packaging/install.sh

uninstall:
	packaging/uninstall.sh

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache build dist *.egg-info packaging/build packaging/dist

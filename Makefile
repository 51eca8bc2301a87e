# The README's two commands are `make run` and `make test`; everything else is a helper.
.PHONY: setup run test lint pytest bench bench-quick security screenshots package install uninstall clean

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

# The hardening suite at full length (docs/security-tests.md): the security
# tests, a 60-second 100-client load run and 60 s of atheris per parser.
security: setup
	$(PY) -m pytest tests/security tests/relay/test_relay_more.py tests/vault/test_vault.py -q
	$(PY) -m scripts.load_relay --clients 100 --seconds 60
	$(PY) -m scripts.fuzz_parsers --seconds-per-target 60

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

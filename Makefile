# The two commands a newcomer needs:  make demo   and   make test
# Each one bootstraps what is missing (Debian packages, .venv, the package) first.
VENV := .venv
PY := $(VENV)/bin/python
US := $(VENV)/bin/urbansense

.PHONY: demo test bootstrap lint stack-up stack-down clean

bootstrap:
	@bash scripts/bootstrap.sh

# make demo SCENARIO=huangpu-river-day plays another shipped scenario
demo: bootstrap
	@$(US) demo $(if $(SCENARIO),--scenario $(SCENARIO))

test: bootstrap
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/mypy
	@$(VENV)/bin/lint-imports --no-logo
	@$(PY) -m pytest

lint: bootstrap
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/mypy
	@$(VENV)/bin/lint-imports --no-logo

stack-up: bootstrap
	@$(US) stack up

stack-down:
	@$(US) stack down

clean:
	@$(US) stack down >/dev/null 2>&1 || true
	rm -rf .run

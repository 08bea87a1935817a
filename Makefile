# Two entry points; each creates or reuses .venv/ (scripts/setup_env.sh) and runs one job.
.PHONY: demo test lint

demo:
	scripts/setup_env.sh demo
	scripts/demo.sh

test:
	scripts/setup_env.sh test
	.venv/bin/python -m pytest $(PYTEST_ARGS)

lint:
	scripts/setup_env.sh test
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

# Developer shortcuts; CI runs .ci/run, which installs from scratch and runs the README's test command.
.PHONY: style quality test test-fast

style:
	ruff check --fix .
	ruff format .

quality:
	ruff check .
	ruff format --check .
	python -c "import hf_vlp, trainers"

test:
	python -m pytest -q

test-fast:
	python -m pytest -q -m "not slow"

# The two commands of the README. Each first makes sure of the environment (deploy/bootstrap.sh),
# which takes a second or two when everything is already installed.
.PHONY: demo test env bench clean-var

env:
	@bash deploy/bootstrap.sh

demo: env
	.venv/bin/semspark demo

test: env
	.venv/bin/python -m pytest -q tests

bench: env
	.venv/bin/python bench/ingest_bench.py
	.venv/bin/python bench/train_bench.py

clean-var:
	rm -rf var

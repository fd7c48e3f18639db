# Two commands for a fresh machine with Python 3.11 and pip (see README.md).
.PHONY: demo test test-all

demo:  ## create the environment (first time) and run the sample night end to end
	scripts/with_venv.sh python sleep.py demo

test:  ## the test suite on CPU (slow tests left out; GPU tests skip without CUDA)
	scripts/with_venv.sh python -m pytest -q

test-all:  ## every test, slow ones included
	scripts/with_venv.sh python -m pytest -q -m ""

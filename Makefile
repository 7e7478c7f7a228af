# Two commands on a fresh machine: `make demo` and `make test`. Both install what is missing first.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := out/demo

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

# torch/torchvision 2.14.1/0.29.1 come from this machine's local disk (see README, Install).
# pixeltable-yolox goes in without its deps: it pins onnxsim/tensorboard that nothing here needs.
$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps pixeltable-yolox==0.4.3
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO)/output  # a run into an existing folder appends (segments continue numbering): start clean
	$(PY) -m pipeline run configs/demo.yaml
	@echo "annotated video: $(DEMO)/output/field/segment_*.mp4 (tracks.jsonl and events.jsonl beside it)"

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)
	$(PY) scripts/bench_pipeline.py

clean:
	rm -rf out .pytest_cache

# The README names these targets; each one runs the idempotent set-up first.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo serve test bench bench-quick eval train-default

setup:
	@bash scripts/setup.sh

# The main job: start the predictor in Triton and the selector, route one prompt, stop both.
demo: setup
	$(VENV)/bin/routoo demo

serve: setup
	$(VENV)/bin/routoo serve

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m bench.run

bench-quick: setup
	$(PY) -m bench.run --quick

eval: setup
	$(VENV)/bin/routoo eval --train ../shared/data/mmlu-pro/train --test ../shared/data/mmlu-pro/dev \
		--out-json docs/evaluation-static.json --plot docs/frontier.png

# The recipe's own default (--lexical auto) keeps the lexical part on mmlu-pro (dev frontier AUC 0.7951
# head-only -> 0.8014, 0.8032 with recipe v3; docs/evaluation.md "Lexical part"); `routoo export-onnx`
# carries it in the static graph. Bit-for-bit only on the CPU kind that made the committed one (Intel).
train-default: setup
	$(VENV)/bin/routoo train --data ../shared/data/mmlu-pro/train --dev ../shared/data/mmlu-pro/dev \
		--encoder static --out predictor_service/default_artifact

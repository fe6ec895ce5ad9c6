"""One module per user-facing command; `python -m fast_lightning <command> key=value ...` dispatches here.

Commands are imported lazily so `make help` and `check-data` do not pay for torch model imports.
"""

COMMANDS = {
    "check-data": ("fast_lightning.commands.check_data", "validate a class folder and print counts per split and type"),
    "demo-data": ("fast_lightning.commands.demo_data", "generate the embedded synthetic demo dataset into data/demo"),
    "train-diffusion": ("fast_lightning.commands.train_diffusion", "train the foreground-aware diffusion model (FARM) for a class"),
    "synthesize": ("fast_lightning.commands.synthesize", "synthesize (image, mask) pairs to disk with AIAS or a baseline sampler"),
    "bench-sampling": ("fast_lightning.commands.bench_sampling", "time AIAS vs DDIM vs DDPM on one model; JSON + plot"),
    "sheet": ("fast_lightning.commands.sheet", "synthesized defects in the model's window next to real ones, per sampling setting"),
    "fidelity": ("fast_lightning.commands.fidelity", "synthesized vs real defects per type: contrast statistics + classifier two-sample test"),
    "fidelity-rank": ("fast_lightning.commands.fidelity_rank", "Spearman correlation of the fidelity score with the benchmark's pixel AP"),
    "bench-train": ("fast_lightning.commands.bench_train", "training steps/s, FLOPs and share of peak, fp32 vs bf16, eager vs channels_last/compile; sampling split; JSON + plot"),
    "gpu-check": ("fast_lightning.commands.gpu_check", "bench-train, a 1-seed benchmark and bench-sampling in <= 9 min on one GPU, under one folder"),
    "train-seg": ("fast_lightning.commands.train_seg", "train a segmenter on synthesized anomalies, test on real defects"),
    "eval-seg": ("fast_lightning.commands.eval_seg", "re-evaluate a segmenter checkpoint on the real-test split"),
    "convert-checkpoint": ("fast_lightning.commands.convert_checkpoint", "make a trusted older checkpoint load safely (weights-only)"),
    "predict": ("fast_lightning.commands.predict", "run a trained segmenter on new images: maps, masks, overlays, CSV"),
    "export": ("fast_lightning.commands.export", "export a segmenter (normalisation inside) to TorchScript or ONNX"),
    "demo": ("fast_lightning.commands.demo", "the whole pipeline on the embedded demo dataset, with a results table"),
    "compare": ("fast_lightning.commands.compare", "segmenter per synthesizer and seed; comparison table, plots, sample sheet"),
    "benchmark": ("fast_lightning.commands.benchmark", "compare on the fixed suite (tire, magnetic tile), 3 seeds; targets met?"),
    "ablate": ("fast_lightning.commands.ablate", "AIAS steps and FARM on/off against downstream metrics"),
    "sweep": ("fast_lightning.commands.sweep", "register a W&B sweep and start an agent (needs W&B login)"),
    "sweep-local": ("fast_lightning.commands.sweep_local", "run a W&B sweep YAML locally without a server"),
    "sweep-trial": ("fast_lightning.commands.sweep_trial", "one synthesis-sweep trial: cached train-diffusion + train-seg on synth=fast"),
}

"""The pipeline stages (train-diffusion, synthesize, train-seg) as ``run(cfg)`` library functions.

Commands parse arguments and call them; the study steps (compare, demo, ablate, benchmark) call them with a
config. Above segmentation/, training and resume; below study and commands.
"""

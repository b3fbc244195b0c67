"""kdharness: a compact, mdistiller-compatible knowledge-distillation harness.

Same config keys, `Distiller` protocol, model names and checkpoints as mdistiller, plus
seeds, exact resume, timm-registered models and plugin discovery.
"""
__version__ = "0.1.0"

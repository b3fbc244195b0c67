"""Packaging for the host harness (kdharness) and the ICKD plugin (ickd_plugin).

Version ranges, not pins: users with other CUDA builds of torch keep theirs. The README's
commands install torch==2.14.1 / torchvision==0.29.1, a pair known to work together.
"""
from setuptools import find_packages, setup

setup(
    name="ickd-pytorch",
    version="0.1.0",
    description="In-Context Knowledge Distillation as a plugin for an mdistiller-compatible harness",
    python_requires=">=3.10",
    packages=find_packages(include=["kdharness", "kdharness.*", "ickd_plugin", "ickd_plugin.*"]),
    package_data={"kdharness": ["reference/*.csv", "reference/*.json", "reference/*/*.json"]},
    install_requires=[
        "torch>=2.1,<3",
        "torchvision>=0.16",
        "timm>=0.9,<2",
        "yacs>=0.1.8",
        "numpy>=1.24",
        "tensorboardX>=2.6",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist>=3"],
        "plot": ["matplotlib>=3.6"],
        "wandb": ["wandb>=0.15"],  # LOG.WANDB True: the run's scalars in Weights & Biases too
        "tensorboard": ["tensorboard>=2.10"],  # the viewer: tensorboard --logdir output/ (tensorboardX only writes)
    },
    entry_points={
        # The host calls every plugin's register(distiller_dict, CFG, trainer_dict) at start-up.
        "kdharness.plugins": ["ickd = ickd_plugin:register"],
    },
)

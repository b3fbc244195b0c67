"""scripts/quickstart.sh, the main job: vanilla, KD and ICKD+KD students on the same seed and budget.

Its table compares methods, so the students' runs may differ in the method only; these tests read
the configs the script actually passes to tools/sweep.py (no training: fast).
"""
from __future__ import annotations

import re
import shlex

from harness_utils import REPO
from kdharness.compose import load_config
from kdharness.engine.trainer import method_name

QUICKSTART = REPO / "scripts" / "quickstart.sh"
# Everything that decides a student's budget and evaluation; the method's own nodes may differ.
SAME_FOR_EVERY_STUDENT = (
    "DATASET.TYPE", "DATASET.TRAIN_SUBSET", "DATASET.TEST.BATCH_SIZE", "DISTILLER.STUDENT",
    "SOLVER.BATCH_SIZE", "SOLVER.EPOCHS", "SOLVER.LR", "SOLVER.SCHEDULER", "SOLVER.WEIGHT_DECAY",
    "SOLVER.MOMENTUM", "SOLVER.TYPE", "EXPERIMENT.SEED", "LOG.PREFIX", "EXPERIMENT.PROJECT",
)


def _sweep_command() -> list[str]:
    """The arguments of the script's `tools/sweep.py` line (backslash continuations joined)."""
    text = QUICKSTART.read_text().replace("\\\n", " ")
    (line,) = [l for l in text.splitlines() if "tools/sweep.py" in l and not l.lstrip().startswith("#")]
    return shlex.split(line.split("tools/sweep.py", 1)[1])


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def test_quickstart_trains_vanilla_kd_and_ickd_kd_on_one_seed_and_budget():
    args = _sweep_command()
    seeds = args[args.index("--seeds") + 1 : args.index("--cfg")]
    configs = [a for a in args[args.index("--cfg") + 1 :] if a.endswith(".yaml")]
    assert seeds == ["0"], args
    cfgs = {path: load_config(str(REPO / path), []) for path in configs}
    assert sorted(method_name(cfg) for cfg in cfgs.values()) == ["ICKD+KD", "KD", "vanilla"], configs
    first_path, first = next(iter(cfgs.items()))
    for path, cfg in cfgs.items():
        for key in SAME_FOR_EVERY_STUDENT:
            assert _get(cfg, key) == _get(first, key), f"{path}: {key} = {_get(cfg, key)!r}, {first_path} has {_get(first, key)!r}"
    teacher_run = re.search(r"--cfg (\S+vanilla/res14\.yaml)", QUICKSTART.read_text())
    assert teacher_run, "quickstart.sh no longer trains the resnet14 teacher"
    teacher = load_config(str(REPO / teacher_run.group(1)), [])
    teacher_dir = f"{teacher.LOG.PREFIX.rstrip('/')}/{teacher.EXPERIMENT.PROJECT}/{teacher.EXPERIMENT.NAME}".removeprefix("./")
    for cfg in cfgs.values():  # the distilled students read the teacher the script trained
        if cfg.DISTILLER.TYPE != "NONE":
            assert cfg.DISTILLER.TEACHER_WEIGHTS == f"{teacher_dir}/student_best"

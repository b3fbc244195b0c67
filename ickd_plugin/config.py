"""The `CFG.ICKD` node: defaults, validation, and the typed options the distiller reads.

The node is added to the host's yacs tree by `register()` so that a YAML file can override
any key. The distiller validates it once, in its constructor, and from then on reads a
frozen dataclass: a wrong value fails before the first batch with a message that names the
key, the value and what is allowed, instead of as a shape error deep inside a step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from yacs.config import CfgNode as CN

PARADIGMS = ("offline", "online", "teacher_free")
BANK_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BANK_DEVICES = ("auto", "cpu", "cuda")
# Where the retrieval query comes from (docs/method.md, "Retrieval"): this step's augmented view, or the bank row.
QUERIES = ("augmented", "clean")
# How retrieval compares features (docs/method.md, "Retrieval"): cosine, or cosine after subtracting the bank's mean.
SIMILARITIES = ("cosine", "centered")

# Smallest ICKD.TAU: cosine similarities lie in [-1, 1], so S / TAU is finite for any normal float32 TAU.
MIN_TAU = torch.finfo(torch.float32).tiny

# What `teacher_requirement` reports for each paradigm (the host's vocabulary).
TEACHER_REQUIREMENT = {"offline": "pretrained", "online": "scratch", "teacher_free": "none"}


def get_ickd_defaults() -> CN:
    """A fresh `CFG.ICKD` node with the defaults (see docs/method.md for each symbol)."""
    node = CN()
    node.BASE = "KD"  # any registered distiller whose losses ICKD adds to ("NONE", "KD", "DKD", "CRD", ...)
    node.PARADIGM = "offline"  # "offline" | "online" | "teacher_free"
    node.K = 8  # positives: Top-K most similar same-class bank samples
    node.N = 8  # negatives: Top-N most similar other-class bank samples
    node.TAU = 0.1  # tau_1: temperature of the similarity softmax that weights the positives
    node.T = 4.0  # temperature of the logit distributions in PICD / NICD / online mutual KD
    node.BETA1 = 0.5  # beta_1: share of the in-context logits in the PICD target
    node.BETA2 = 1.0  # beta_2: NICD margin on the KL divergence
    node.PICD_WEIGHT = 1.0  # gamma_picd
    node.NICD_WEIGHT = 0.1  # gamma_nicd
    node.ALL_SAME_CLASS = False  # IC-KD-all: every same-class sample is a positive
    node.QUERY = "augmented"  # retrieval query: "augmented" (this step's view) | "clean" (the sample's own bank row)
    node.SIMILARITY = "cosine"  # retrieval similarity: "cosine" | "centered" (cosine after subtracting the bank's mean)
    node.WARMUP = 20  # epochs of linear ramp of both terms (0 = none), as DKD
    node.ONLINE = CN()
    node.ONLINE.CE_WEIGHT = 1.0  # teacher's cross-entropy (online paradigm)
    node.ONLINE.MUTUAL_WEIGHT = 1.0  # teacher's KL to the student (deep mutual learning)
    node.BANK = CN()
    node.BANK.DTYPE = "float32"  # "float32" | "float16" | "bfloat16"
    node.BANK.DEVICE = "auto"  # "auto" (the network's device) | "cpu" | "cuda"
    node.BANK.MOMENTUM = 0.5  # online / teacher-free refresh: row <- m * row + (1 - m) * new
    node.BANK.BATCH_SIZE = 256  # batch size of the no-grad pass that fills the bank
    node.BANK.CHUNK_SIZE = 0  # bank rows per similarity matmul (0 = automatic)
    node.BANK.CACHE_DIR = "./output/ickd_bank_cache"
    node.BANK.USE_CACHE = True  # offline only: reuse a bank built earlier with the same teacher
    node.BANK.SHARDED = False  # under torch.distributed, rank r holds only its 1/world of the rows (docs/method.md)
    node.DENSE = CN()  # segmentation students (docs/method.md, "Dense ICKD")
    node.DENSE.BANK_PIXELS_PER_CLASS = 8  # bank pixels drawn per class per training image
    node.DENSE.QUERY_PIXELS = 32  # query pixels drawn per image per step, spread over its classes
    node.DENSE.SEED = 0  # seed of the bank's pixel draw (per image, independent of the pass's order)
    node.DENSE.FEATURE = "decoder"  # the entry of the model's feats holding the features its classifier maps
    return node


@dataclass(frozen=True)
class DenseOptions:
    """The validated `CFG.ICKD.DENSE` node."""

    bank_pixels_per_class: int
    query_pixels: int
    seed: int
    feature: str


def parse_dense_config(node: CN) -> DenseOptions:
    """Validate `cfg.ICKD` for a segmentation student: the DENSE keys and what dense ICKD supports."""
    dense = node.DENSE
    for key in ("BANK_PIXELS_PER_CLASS", "QUERY_PIXELS"):
        if not isinstance(dense[key], int) or dense[key] < 1:
            _fail(f"DENSE.{key}", dense[key], "expected an integer >= 1")
    if not isinstance(dense.SEED, int):
        _fail("DENSE.SEED", dense.SEED, "expected an integer")
    if not isinstance(dense.FEATURE, str) or not dense.FEATURE:
        _fail("DENSE.FEATURE", dense.FEATURE, "expected the name of an entry of the model's feats, e.g. 'decoder'")
    if node.PARADIGM != "offline":
        _fail("PARADIGM", node.PARADIGM, "a segmentation student supports 'offline' only (the dense bank is "
              "sampled once from a frozen teacher)")
    if node.BANK.SHARDED:
        _fail("BANK.SHARDED", node.BANK.SHARDED, "not supported for a segmentation student; set it False")
    if node.QUERY != "augmented":
        _fail("QUERY", node.QUERY, "a segmentation student's queries are pixels of the augmented view; use 'augmented'")
    return DenseOptions(int(dense.BANK_PIXELS_PER_CLASS), int(dense.QUERY_PIXELS), int(dense.SEED), str(dense.FEATURE))


@dataclass(frozen=True)
class ICKDOptions:
    """The validated `CFG.ICKD` node as plain Python values."""

    base: str
    paradigm: str
    k: int
    n: int
    tau: float
    temperature: float
    beta1: float
    beta2: float
    picd_weight: float
    nicd_weight: float
    all_same_class: bool
    warmup: float
    online_ce_weight: float
    online_mutual_weight: float
    bank_dtype: torch.dtype
    bank_device: str
    bank_momentum: float
    bank_batch_size: int
    bank_chunk_size: int
    cache_dir: str
    use_cache: bool
    bank_sharded: bool = False
    query: str = "augmented"
    similarity: str = "cosine"


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"ICKD.{key} = {value!r}; {allowed}")


def parse_ickd_config(node: CN, registry: Mapping[str, Any] | None = None) -> ICKDOptions:
    """Validate `cfg.ICKD` and return it as `ICKDOptions`.

    `registry` is the distiller_dict that ICKD was registered into; when given, ICKD.BASE
    must name one of its entries (and not ICKD itself).
    """
    if node.PARADIGM not in PARADIGMS:
        _fail("PARADIGM", node.PARADIGM, f"allowed: {', '.join(PARADIGMS)}")
    if node.BANK.DTYPE not in BANK_DTYPES:
        _fail("BANK.DTYPE", node.BANK.DTYPE, f"allowed: {', '.join(BANK_DTYPES)}")
    if node.BANK.DEVICE not in BANK_DEVICES:
        _fail("BANK.DEVICE", node.BANK.DEVICE, f"allowed: {', '.join(BANK_DEVICES)}")
    if node.BANK.DEVICE == "cuda" and not torch.cuda.is_available():
        _fail("BANK.DEVICE", node.BANK.DEVICE, "CUDA is not available here; use 'auto' or 'cpu'")
    if node.BASE == "ICKD":
        _fail("BASE", node.BASE, "ICKD cannot be its own base; use NONE, KD, DKD, CRD, ...")
    if registry is not None and node.BASE not in registry:
        names = ", ".join(sorted(str(name) for name in registry if name != "ICKD"))
        _fail("BASE", node.BASE, f"not a registered distiller; allowed: {names}")
    if node.PARADIGM == "teacher_free" and node.BASE != "NONE":
        _fail("BASE", node.BASE, "ICKD.PARADIGM teacher_free has no teacher to distil from; only NONE is allowed")
    for key in ("K", "N"):
        if not isinstance(node[key], int) or node[key] < 1:
            _fail(key, node[key], "expected an integer >= 1")
    for key in ("TAU", "T"):
        if not node[key] > 0:
            _fail(key, node[key], "expected a number > 0")
    # S / TAU with |S| <= 1 must stay finite in float32, else the positives' softmax is NaN.
    if node.TAU < MIN_TAU:
        _fail("TAU", node.TAU, f"expected a number >= {MIN_TAU:.4g} (float32's smallest normal number; "
              "below it 1 / TAU overflows and the positive weights are NaN)")
    for key in ("PICD_WEIGHT", "NICD_WEIGHT", "WARMUP", "BETA2"):
        if node[key] < 0:
            _fail(key, node[key], "expected a number >= 0")
    for key in ("CE_WEIGHT", "MUTUAL_WEIGHT"):
        if node.ONLINE[key] < 0:
            _fail(f"ONLINE.{key}", node.ONLINE[key], "expected a number >= 0")
    if not 0.0 <= node.BETA1 <= 1.0:
        _fail("BETA1", node.BETA1, "expected a number in [0, 1] (1 = in-context logits only)")
    if not 0.0 <= node.BANK.MOMENTUM < 1.0:
        _fail("BANK.MOMENTUM", node.BANK.MOMENTUM, "expected a number in [0, 1) (1 would never refresh the bank)")
    if node.BANK.BATCH_SIZE < 1:
        _fail("BANK.BATCH_SIZE", node.BANK.BATCH_SIZE, "expected an integer >= 1")
    if node.BANK.SHARDED and node.ALL_SAME_CLASS:
        _fail("BANK.SHARDED", node.BANK.SHARDED, "not supported with ICKD.ALL_SAME_CLASS True (IC-KD-all weighs every "
              "same-class row); set ICKD.BANK.SHARDED False or ICKD.ALL_SAME_CLASS False")
    if node.QUERY not in QUERIES:
        _fail("QUERY", node.QUERY, f"allowed: {', '.join(QUERIES)}")
    if node.QUERY == "clean" and node.BANK.SHARDED:
        _fail("QUERY", node.QUERY, "'clean' reads the sample's own bank row, which a sharded bank holds on one rank "
              "only; set ICKD.QUERY augmented or ICKD.BANK.SHARDED False")
    if node.SIMILARITY not in SIMILARITIES:
        _fail("SIMILARITY", node.SIMILARITY, f"allowed: {', '.join(SIMILARITIES)}")
    if node.BANK.CHUNK_SIZE < 0:
        _fail("BANK.CHUNK_SIZE", node.BANK.CHUNK_SIZE, "expected an integer >= 0 (0 = automatic)")
    return ICKDOptions(
        base=node.BASE,
        paradigm=node.PARADIGM,
        k=int(node.K),
        n=int(node.N),
        tau=float(node.TAU),
        temperature=float(node.T),
        beta1=float(node.BETA1),
        beta2=float(node.BETA2),
        picd_weight=float(node.PICD_WEIGHT),
        nicd_weight=float(node.NICD_WEIGHT),
        all_same_class=bool(node.ALL_SAME_CLASS),
        warmup=float(node.WARMUP),
        online_ce_weight=float(node.ONLINE.CE_WEIGHT),
        online_mutual_weight=float(node.ONLINE.MUTUAL_WEIGHT),
        bank_dtype=BANK_DTYPES[node.BANK.DTYPE],
        bank_device=node.BANK.DEVICE,
        bank_momentum=float(node.BANK.MOMENTUM),
        bank_batch_size=int(node.BANK.BATCH_SIZE),
        bank_chunk_size=int(node.BANK.CHUNK_SIZE),
        cache_dir=str(node.BANK.CACHE_DIR),
        use_cache=bool(node.BANK.USE_CACHE),
        bank_sharded=bool(node.BANK.SHARDED),
        query=str(node.QUERY),
        similarity=str(node.SIMILARITY),
    )

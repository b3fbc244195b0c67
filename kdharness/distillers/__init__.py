"""mdistiller's distillers, registered by name in ``distiller_dict`` on import.

Importing this package is what makes mdistiller's names ("NONE", "KD", "DKD", "CRD",
"FITNET", "AT", ...; the table in docs/methods_zoo.md) resolvable from ``DISTILLER.TYPE``;
plugins add theirs to the same dict.
"""
from kdharness.distillers import _base, crd, dkd, kd  # noqa: F401  (import registers)
from kdharness.distillers import at, fitnet, kdsvd, nst, pkt, rkd, sp  # noqa: F401  (import registers)
from kdharness.distillers import ofd, reviewkd, vid  # noqa: F401  (import registers)
from kdharness.distillers import cwd, pixel_kd  # noqa: F401  (import registers: segmentation's PIXEL_KD, CWD)
from kdharness.distillers._base import Distiller, Vanilla
from kdharness.registry import distiller_dict

distiller_dict["NONE"] = Vanilla

__all__ = ["Distiller", "Vanilla", "distiller_dict"]

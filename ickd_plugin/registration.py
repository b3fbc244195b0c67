"""The ICKD class a host registers: one ``distiller_dict["ICKD"]`` for classification and
segmentation students, looking ``ICKD.BASE`` up in that same registry."""
from __future__ import annotations

from typing import Any, Mapping

from ickd_plugin.dense_distiller import DenseICKD
from ickd_plugin.distiller import ICKD


def ickd_distiller_class(distiller_dict: Mapping[str, Any]) -> type[ICKD]:
    """An ICKD subclass that looks ICKD.BASE up in `distiller_dict`; built with a segmentation
    student (``get_dense_classifier``) it gives the matching `DenseICKD`."""
    dense = type("DenseICKD", (DenseICKD,), {"registry": distiller_dict, "__module__": __name__, "__qualname__": "DenseICKD"})
    return type("ICKD", (ICKD,), {"registry": distiller_dict, "dense_class": dense, "__module__": __name__,
                                  "__qualname__": "ICKD"})

"""DSC and HD95 evaluation under explicit, named protocols (``strict``, ``monai``, ``legacy_unetrpp``,
``legacy_transunet``), on the original grid with header spacing, computed on bounding boxes and surface voxels.

Entry points:

* :func:`evaluate_case` scores two label-map arrays (one row per class);
* :func:`evaluate_folders` scores two folders (paired by case id) into a :class:`Summary`, optionally writing
  ``per_case.csv``, ``summary.json`` and ``summary.md`` (the ``medseg evaluate`` command);
* :data:`PROTOCOLS` / :func:`get_protocol` and :data:`CLASS_SETS` / :func:`resolve_classes` name the rules.

Examples:
    >>> import numpy as np
    >>> from pipeline.evaluation import evaluate_case
    >>> gt = np.zeros((16, 16, 8), np.uint8); gt[4:10, 4:10, 2:6] = 1
    >>> [round(evaluate_case(gt, gt, (1.0, 1.0, 3.0), [1])[0][k], 3) for k in ("dice", "hd95")]
    [1.0, 0.0]
"""

from pipeline.evaluation.classes import CLASS_SETS, ClassSet, resolve_classes
from pipeline.evaluation.folders import evaluate_folders
from pipeline.evaluation.metrics import evaluate_case
from pipeline.evaluation.protocols import PROTOCOLS, Protocol, get_protocol
from pipeline.evaluation.report import write_reports
from pipeline.evaluation.summary import Summary
from pipeline.evaluation.surface import SurfaceDistances, surface_distances

__all__ = [
    "CLASS_SETS",
    "ClassSet",
    "resolve_classes",
    "Summary",
    "evaluate_folders",
    "evaluate_case",
    "PROTOCOLS",
    "Protocol",
    "get_protocol",
    "write_reports",
    "SurfaceDistances",
    "surface_distances",
]

"""The bundles' configs, generated from one template plus one small spec per bundle.

``pipeline/bundles/specs.py`` holds a :class:`BundleSpec` per folder of ``bundles/`` (dataset, split, patch,
preprocessing preset, classes, registered network preset, training recipe); :mod:`pipeline.bundles.template` turns
a spec into ``inference.json``, ``train.json``, ``evaluate.json``, ``multi_gpu_train.json`` and ``logging.conf``.
``python -m pipeline.bundles.build`` writes them and ``--check`` reports a committed file that drifted from them
(``tests/bundles/test_bundle_generator.py`` runs the check).

Examples:
    >>> from pipeline.bundles import SPECS, render_bundle
    >>> files = render_bundle(SPECS["unetrpp_hippocampus_mri_segmentation"])
    >>> '"name": "unetrpp_hippocampus"' in files["inference.json"]
    True
"""

from pipeline.bundles.spec import BundleSpec, TrainRecipe
from pipeline.bundles.specs import SPECS
from pipeline.bundles.template import render_bundle

__all__ = ["BundleSpec", "TrainRecipe", "SPECS", "render_bundle"]

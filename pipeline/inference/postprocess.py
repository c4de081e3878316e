"""Label-map postprocessing: output dtype choice and largest-connected-component filtering.

Examples:
    >>> import numpy as np
    >>> label_dtype(np.array([0, 3]))
    <class 'numpy.uint8'>
    >>> x = np.zeros((6, 6, 6), dtype=np.uint8); x[0:2, 0:2, 0:2] = 1; x[4:6, 4:6, 4:6] = 1; x[4, 4, 4] = 1
    >>> int(keep_largest_component(x).sum())
    8
"""

from __future__ import annotations

import numpy as np

__all__ = ["label_dtype", "keep_largest_component"]


def label_dtype(labels: np.ndarray, n_classes: int | None = None) -> type:
    """``np.uint8`` when every label (and every class index ``< n_classes``) fits, else ``np.uint16``."""
    top = int(np.max(labels)) if np.size(labels) else 0
    if n_classes is not None:
        top = max(top, int(n_classes) - 1)
    if top > np.iinfo(np.uint16).max:
        raise ValueError(f"label {top} does not fit uint16")
    return np.uint8 if top <= np.iinfo(np.uint8).max else np.uint16


def keep_largest_component(labels: np.ndarray, classes: list[int] | None = None) -> np.ndarray:
    """Keep, for each foreground class independently, its largest 26-connected component (others -> 0).

    Implemented with ``scipy.ndimage.label`` (MONAI's ``KeepLargestConnectedComponent`` needs scikit-image on CPU).

    Args:
        labels: integer label map (spatial axes only).
        classes: classes to filter (default: all present labels > 0).
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    present = [int(c) for c in np.unique(labels) if c > 0] if classes is None else list(classes)
    out = labels.copy()
    structure = np.ones((3,) * labels.ndim, dtype=bool)
    for c in present:
        comp, n = ndimage.label(labels == c, structure=structure)
        if n <= 1:
            continue
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        out[(comp != 0) & (comp != int(np.argmax(sizes)))] = 0
    return out

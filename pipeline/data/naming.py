"""Case names from file names, and the role words that pair the files of one case: an image with its label
(``medseg datasets``, a plain folder) and a prediction with its label (``medseg evaluate``).

**Suffixes and case names.** An image file ends in one of :data:`IMAGE_SUFFIXES` (``.nii.gz``, ``.nii``, ``.nrrd``,
``.nhdr``, ``.mha``, ``.mhd``, ``.dcm``; case-insensitive); a label map or a prediction that ``evaluate`` scores ends
in one of :data:`LABEL_SUFFIXES` (the same without the DICOM slice ``.dcm``). A file's **case name**
(:func:`case_name`) is its name without that suffix; a folder (a DICOM series) keeps its whole name.

**Role words.** Words that say what a file is, before or after the case's own name. Each rule uses these:

====================================  ==============================================================================
rule                                  words
====================================  ==============================================================================
label file in a folder                :data:`LABEL_WORDS`: ``label_<key>``/``label<key>``, ``<key>_seg``/``<key>-gt``
(:func:`pair_labels`)                 (case-insensitive; as a prefix they are tried in the order listed)
image key in a folder                 :data:`MODALITY_WORDS` and ``image``/``img``, removed from the front:
(:func:`pair_labels`)                 ``ct_<key>``, ``img<key>``
case id of a prediction or label      :data:`IMAGE_WORDS`, :data:`LABEL_WORDS` except ``segmentation`` and
(:func:`case_id`, :func:`pair_cases`) :data:`PREDICTION_WORDS`, as a prefix before a digit, ``_`` or ``-``
                                      (``img0001``, ``pred_12``) or a suffix after ``_``/``-`` (``sts_010_seg``)
====================================  ==============================================================================

**Pairing a prediction with its label** (:func:`pair_cases`, never by sort order):

1. ``evaluate`` lists the files of each folder that end in one of :data:`LABEL_SUFFIXES`, ignoring hidden files
   (``.name``, e.g. unfinished atomic writes: :func:`pipeline.evaluation.io.list_label_files`);
2. a prediction and a label with the same case name are paired;
3. the remaining files are paired by **case id**: the case name, lower-cased, with a trailing nnU-Net channel suffix
   (``_0000``; only when a digit remains, so ``case_0001`` keeps its number), then a trailing role suffix, then a
   leading role prefix removed: ``img0001``, ``label0001`` and ``pred_0001_0000`` all have id ``0001``;
4. several files with the same id on one side are reported as ambiguous and not scored; labels without a prediction
   are reported as missing, predictions without a label as extra.

The reported ``case`` is the prediction's case name.

Examples:
    >>> case_name("a/b/img0001.nii.gz"), image_suffix("x.NRRD"), case_id("label0001")
    ('img0001', '.nrrd', '0001')
    >>> labelled, unlabelled = pair_labels([{"image": "ct_7.nrrd", "case": "ct_7"},
    ...                                     {"image": "label_7.nii.gz", "case": "label_7"}])
    >>> labelled
    [{'image': 'ct_7.nrrd', 'case': 'ct_7', 'label': 'label_7.nii.gz'}]
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "IMAGE_SUFFIXES",
    "IMAGE_WORDS",
    "LABEL_SUFFIXES",
    "LABEL_WORDS",
    "MODALITY_WORDS",
    "NIFTI_SUFFIXES",
    "PREDICTION_WORDS",
    "Pairing",
    "SITK_SUFFIXES",
    "case_id",
    "case_name",
    "image_suffix",
    "pair_cases",
    "pair_labels",
]

#: NIfTI suffixes (read by nibabel)
NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: suffixes read by SimpleITK (DICOM series are folders)
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
#: every single-file image suffix we accept, longest first so ``.nii.gz`` wins over ``.gz``
IMAGE_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES
#: suffixes of a label map or a prediction that ``evaluate`` scores: one volume per file, so not a DICOM slice
LABEL_SUFFIXES = tuple(s for s in IMAGE_SUFFIXES if s != ".dcm")

#: words naming a label map (as a prefix they are tried in this order: ``seg`` before ``segmentation``)
LABEL_WORDS = ("labels", "label", "seg", "segmentation", "mask", "gt")
#: words naming a prediction
PREDICTION_WORDS = ("prediction", "pred")
#: words naming an image
IMAGE_WORDS = ("images", "image", "img")
#: modality words that may start an image's name (``ct_<key>``)
MODALITY_WORDS = ("mri", "mr", "ct")


def _alternatives(*groups: Iterable[str], without: Iterable[str] = ()) -> str:
    skip = set(without)
    return "|".join(w for group in groups for w in group if w not in skip)


# image <-> label in a folder (pair_labels); case-insensitive
_LABEL_PREFIX = re.compile(rf"^(?:{_alternatives(LABEL_WORDS)})[_-]?(.*)$", re.IGNORECASE)
_LABEL_SUFFIX = re.compile(rf"^(.*?)[_-](?:{_alternatives(LABEL_WORDS)})$", re.IGNORECASE)
_IMAGE_PREFIX = re.compile(
    rf"^(?:{_alternatives(MODALITY_WORDS, IMAGE_WORDS, without=('images',))})[_-]?", re.IGNORECASE
)
# prediction <-> label (case_id); applied to the lower-cased case name
_CHANNEL = re.compile(r"_\d{4}$")
_CASE_ID_WORDS = _alternatives(IMAGE_WORDS, LABEL_WORDS, PREDICTION_WORDS, without=("segmentation",))
_ROLE_SUFFIX = re.compile(rf"[_-]({_alternatives(LABEL_WORDS, PREDICTION_WORDS, without=('segmentation',))})$")
_ROLE_PREFIX = re.compile(rf"^({_CASE_ID_WORDS})(?=[0-9_-])[_-]?")


def image_suffix(path: str | os.PathLike, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> str | None:
    """The image suffix of ``path`` (``".nii.gz"``, ``".nrrd"`` ...; case-insensitive, returned in lower case), or
    None when its name ends in none of ``suffixes``.

    Examples:
        >>> image_suffix("a/b/img0001.nii.gz"), image_suffix("x.txt"), image_suffix("s.dcm", LABEL_SUFFIXES)
        ('.nii.gz', None, None)
    """
    name = Path(path).name.lower()
    for suffix in suffixes:
        if name.endswith(suffix):
            return suffix
    return None


def case_name(
    path: str | os.PathLike, *, suffixes: Sequence[str] = IMAGE_SUFFIXES, keep_folder_names: bool = True
) -> str:
    """The file name without its image suffix (``img0001.nii.gz`` -> ``img0001``).

    Args:
        path: the file (or DICOM series folder).
        suffixes: the suffixes that are removed (default :data:`IMAGE_SUFFIXES`).
        keep_folder_names: a folder keeps its whole name (a DICOM series folder ``ct.v2`` is case ``ct.v2``); False
            names by the string alone, without looking at the file system (``evaluate`` names a folder called
            ``x.nii.gz`` as case ``x``, so that reading it fails with a line naming it).

    Examples:
        >>> case_name("img0001.nii.gz"), case_name("scan.v2.MHA"), case_name("notes.txt")
        ('img0001', 'scan.v2', 'notes.txt')
    """
    p = Path(path)
    suffix = image_suffix(p, suffixes)
    if suffix is None or (keep_folder_names and p.is_dir()):
        return p.name
    return p.name[: -len(suffix)]


def case_id(name: str) -> str:
    """The case id used to pair a prediction and a label named differently (see the module docstring).

    Examples:
        >>> [case_id(n) for n in ("img0001", "label0001", "lung_001_0000", "sts_001_seg", "pred-12", "case_0001")]
        ['0001', '0001', 'lung_001', 'sts_001', '12', 'case_0001']
    """
    key = name.lower()
    rest = _CHANNEL.sub("", key)
    if any(ch.isdigit() for ch in rest):  # "lung_001_0000" -> "lung_001", but "case_0001" keeps its number
        key = rest
    key = _ROLE_SUFFIX.sub("", key)
    stripped = _ROLE_PREFIX.sub("", key)
    return stripped or key


def pair_labels(items: list[dict]) -> tuple[list[dict], list[dict]]:
    """Split plain-folder inputs (``{"image", "case"}`` items) into labelled pairs and unlabelled images.

    A file named ``label_<key>``/``seg_<key>``/``mask_<key>`` or ``<key>_label``/``<key>_seg``/``<key>_mask`` is the
    label of the image whose name is ``<key>`` or ``ct_<key>``/``img_<key>``/``image_<key>`` (e.g. the DICOM series
    ``ct_series`` and ``label_series.nii.gz``); a folder with exactly one image and one label pairs them. Labels
    without an image stay in the unlabelled list (``datasets check`` shows them).

    Examples:
        >>> labelled, unlabelled = pair_labels([{"image": "img_3.nii", "case": "img_3"},
        ...                                     {"image": "3_seg.nii", "case": "3_seg"},
        ...                                     {"image": "4.nii", "case": "4"}])
        >>> [(it["case"], it["label"]) for it in labelled], [it["case"] for it in unlabelled]
        ([('img_3', '3_seg.nii')], ['4'])
    """
    labels, images = {}, []
    for it in items:
        m = _LABEL_PREFIX.match(it["case"]) or _LABEL_SUFFIX.match(it["case"])
        if m and m.group(1):
            labels[m.group(1)] = it
        else:
            images.append(it)
    if not labels:
        return [], items
    labelled, unlabelled = [], []
    for it in images:
        key = it["case"]
        lab = labels.pop(key, None) or labels.pop(_IMAGE_PREFIX.sub("", key), None)
        if lab is not None:
            labelled.append({**it, "label": lab["image"]})
        else:
            unlabelled.append(it)
    if len(unlabelled) == 1 and len(labels) == 1 and not labelled:
        labelled.append({**unlabelled.pop(), "label": next(iter(labels.values()))["image"]})
        labels.clear()
    unlabelled += list(labels.values())  # labels without an image are listed as images: check shows them
    return labelled, unlabelled


@dataclass
class Pairing:
    """Result of :func:`pair_cases`."""

    pairs: list[tuple[str, Path, Path]] = field(default_factory=list)  # (case, pred, label)
    missing: list[str] = field(default_factory=list)  # label files without a prediction
    extra: list[str] = field(default_factory=list)  # prediction files without a label
    ambiguous: list[str] = field(default_factory=list)  # one line per ambiguous id


def _scored_case_name(path: Path) -> str:
    """The case name of a listed prediction/label file, by its name alone (see :func:`case_name`)."""
    return case_name(path, suffixes=LABEL_SUFFIXES, keep_folder_names=False)


def pair_cases(pred_files: list[Path], label_files: list[Path]) -> Pairing:
    """Pair predictions with labels by case name, then by :func:`case_id`; never by order.

    Examples:
        >>> from pathlib import Path
        >>> r = pair_cases([Path("img0001.nii.gz"), Path("img0003.nii.gz")],
        ...                [Path("label0001.nii.gz"), Path("label0002.nii.gz")])
        >>> [(c, l.name) for c, _, l in r.pairs], r.missing, r.extra
        ([('img0001', 'label0001.nii.gz')], ['label0002.nii.gz'], ['img0003.nii.gz'])
    """
    out = Pairing()

    def unique_names(files: list[Path], role: str) -> list[Path]:
        groups: dict[str, list[Path]] = {}
        for f in files:
            groups.setdefault(_scored_case_name(f), []).append(f)
        for name, group in groups.items():
            if len(group) > 1:
                out.ambiguous.append(f"{role} files {', '.join(g.name for g in group)} share the case name {name!r}")
        return [g[0] for g in groups.values() if len(g) == 1]

    pred_files = unique_names(pred_files, "prediction")
    label_files = unique_names(label_files, "label")
    labels_by_name = {_scored_case_name(p): p for p in label_files}
    rest_pred, used_labels = [], set()
    for p in pred_files:
        lab = labels_by_name.get(_scored_case_name(p))
        if lab is not None and lab not in used_labels:
            out.pairs.append((_scored_case_name(p), p, lab))
            used_labels.add(lab)
        else:
            rest_pred.append(p)
    rest_labels = [p for p in label_files if p not in used_labels]

    def by_id(files: list[Path], role: str) -> dict[str, Path]:
        groups: dict[str, list[Path]] = {}
        for f in files:
            groups.setdefault(case_id(_scored_case_name(f)), []).append(f)
        result = {}
        for key, group in groups.items():
            if len(group) > 1:
                out.ambiguous.append(f"{role} files {', '.join(g.name for g in group)} share the case id {key!r}")
            else:
                result[key] = group[0]
        return result

    preds, labs = by_id(rest_pred, "prediction"), by_id(rest_labels, "label")
    for key, p in preds.items():
        if key in labs:
            out.pairs.append((_scored_case_name(p), p, labs.pop(key)))
        else:
            out.extra.append(p.name)
    out.missing.extend(p.name for p in labs.values())
    out.pairs.sort(key=lambda t: t[0])
    out.missing.sort()
    out.extra.sort()
    return out

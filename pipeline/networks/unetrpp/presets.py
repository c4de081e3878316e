"""Named UNETR++ presets: the official per-dataset networks as data.

Each preset reproduces the network an official trainer builds (``Amshaker/unetr_plus_plus``): same state_dict keys,
shapes and parameter count, official (z, y, x) input layout and patch: these presets are the one place that uses
:class:`UNETRPP`'s explicit ``input_order="zyx"`` (its default is MONAI's (x, y, z)). Pass ``input_order="xyz"`` to
:func:`~pipeline.networks.create_network` to feed MONAI (x, y, z) tensors with the same weights: the registry then
gives ``img_size`` and ``stem_stride`` (the preset's ``spatial_keys``) in (x, y, z), and overrides are read in
(x, y, z) too.

Examples:
    >>> from pipeline.networks import create_network
    >>> create_network("unetrpp_synapse").img_size  # official (z, y, x)
    (64, 128, 128)
    >>> net = create_network("unetrpp_synapse", input_order="xyz")  # MONAI (x, y, z), same state dict
    >>> net.img_size, net.stem_stride
    ((128, 128, 64), (4, 4, 2))

=================  ==============  =========  =========  ===========  ==================
preset             patch (z,y,x)   in / out   E/F        fusion       parameters
=================  ==============  =========  =========  ===========  ==================
unetrpp_synapse    64x128x128      1 / 14     shared     concat       42,952,850
unetrpp_btcv       64x128x128      1 / 14     shared     concat       42,952,850
unetrpp_acdc       16x160x160      1 / 4      separate   concat (+c52) 66,796,404
unetrpp_lung       32x192x192      1 / 2      separate   concat (+c52) 121,174,798
unetrpp_tumor      128x128x128     4 / 4      param EF   sum          42,647,604
=================  ==============  =========  =========  ===========  ==================

The project's own configurations (:data:`PROJECT_PRESETS`, the networks of the bundles trained here) take MONAI
(x, y, z) tensors and give their patch in (x, y, z); they use the corrected EPA maths (``permute_quirk=False``):

=====================  ==============  =========  =========  ===========  ==================
preset                 patch (x,y,z)   in / out   E/F        fusion       parameters
=====================  ==============  =========  =========  ===========  ==================
unetrpp_hippocampus    32x48x32        1 / 3      shared     concat       7,748,497
unetrpp_sts            64x64x32        1 / 2      shared     concat       4,410,102
=====================  ==============  =========  =========  ===========  ==================
"""

from __future__ import annotations

from pipeline.networks.registry import register_preset
from pipeline.networks.unetrpp.network import UNETRPP

__all__ = ["UNETRPP_PRESETS", "PROJECT_PRESETS", "TINY_UNETRPP"]

#: a tiny UNETR++ (3 classes, 16x32x32 patch, 0.4 M parameters) for smoke tests and the ``--quick`` runs of the
#: benchmark scripts; not a registered preset. Build it with ``UNETRPP(**TINY_UNETRPP)`` (and overrides).
TINY_UNETRPP: dict = dict(
    in_channels=1,
    out_channels=3,
    img_size=(16, 32, 32),
    feature_size=8,
    dims=(16, 16, 32, 32),
    depths=(1, 1, 1, 1),
    num_heads=2,
    proj_size=(8, 8, 8, 8),
    decoder_proj_size=8,
    decoder_depth=1,
    stem_stride=(2, 2, 2),
)

#: the official Synapse network; the other official presets state only what differs from it
_SYNAPSE = dict(
    feature_size=16,
    dims=(32, 64, 128, 256),
    depths=(3, 3, 3, 3),
    num_heads=4,
    proj_size=(64, 64, 64, 32),
    decoder_proj_size=64,
    decoder_depth=3,
    deep_supervision=True,
    permute_quirk=True,
    input_order="zyx",
    in_channels=1,
    out_channels=14,
    img_size=(64, 128, 128),
    stem_stride=(2, 4, 4),
    attn_dropout=0.15,
    ef_mode="shared",
    fusion="concat",
    n_conv_blocks=1,
)
#: ACDC and Lung: separate E/F projections and a second conv block (``conv52``)
_SEPARATE_EF = dict(attn_dropout=0.1, ef_mode="separate", n_conv_blocks=2)

#: name -> (constructor kwargs, description); patches are (z, y, x) as nnU-Net
UNETRPP_PRESETS: dict[str, tuple[dict, str]] = {
    "unetrpp_synapse": (
        dict(_SYNAPSE),
        "UNETR++ Synapse (Task002), 13 organs + bg, official layout (z,y,x) 64x128x128",
    ),
    "unetrpp_acdc": (
        dict(_SYNAPSE, out_channels=4, img_size=(16, 160, 160), stem_stride=(1, 4, 4), **_SEPARATE_EF),
        "UNETR++ ACDC (Task001), RV/Myo/LV + bg, official layout (z,y,x) 16x160x160",
    ),
    "unetrpp_lung": (
        dict(_SYNAPSE, out_channels=2, img_size=(32, 192, 192), stem_stride=(1, 4, 4), **_SEPARATE_EF),
        "UNETR++ MSD Lung (Task06), tumour + bg, official layout (z,y,x) 32x192x192",
    ),
    "unetrpp_tumor": (
        dict(
            _SYNAPSE,
            in_channels=4,
            out_channels=4,
            img_size=(128, 128, 128),
            stem_stride=(4, 4, 4),
            attn_dropout=0.1,
            ef_mode="param",
            fusion="sum",
        ),
        "UNETR++ BraTS (Task003), 4 MRI channels, official layout (z,y,x) 128^3",
    ),
    # BTCV uses the Synapse network unchanged (official issue #23)
    "unetrpp_btcv": (
        dict(_SYNAPSE),
        "UNETR++ BTCV (= Synapse network), official layout (z,y,x) 64x128x128",
    ),
}


def _register(presets: dict[str, tuple[dict, str]], axes: str) -> None:
    """Register UNETR++ presets whose tensors and per-axis arguments are in ``axes`` order."""
    for name, (kwargs, desc) in presets.items():
        register_preset(
            name,
            UNETRPP,
            kwargs,
            description=desc,
            roi_size=tuple(kwargs["img_size"]),
            axes=axes,
            spatial_keys=("img_size", "stem_stride"),
        )


_register(UNETRPP_PRESETS, axes="zyx")

_PROJECT = dict(
    in_channels=1,
    feature_size=16,
    depths=(2, 2, 2, 2),
    num_heads=4,
    proj_size=(32, 32, 32, 16),
    decoder_proj_size=32,
    attn_dropout=0.1,
    ef_mode="shared",
    fusion="concat",
    n_conv_blocks=1,
    permute_quirk=False,
    deep_supervision=True,
)

_HIPPOCAMPUS = dict(
    _PROJECT, out_channels=3, img_size=(32, 48, 32), dims=(32, 64, 128, 128), decoder_depth=1, stem_stride=(2, 2, 2)
)
_STS = dict(
    _PROJECT, out_channels=2, img_size=(64, 64, 32), dims=(16, 32, 64, 128), decoder_depth=2, stem_stride=(4, 4, 2)
)

#: name -> (constructor kwargs, description): the networks of the bundles trained in this project; patches and
#: stem strides are (x, y, z), the order of MONAI tensors (``UNETRPP``'s default ``input_order``)
PROJECT_PRESETS: dict[str, tuple[dict, str]] = {
    "unetrpp_hippocampus": (
        _HIPPOCAMPUS,
        "UNETR++ MSD Task04 Hippocampus (bundle unetrpp_hippocampus_mri_segmentation), (x,y,z) 32x48x32",
    ),
    "unetrpp_sts": (_STS, "UNETR++ soft-tissue sarcoma CT (bundle unetrpp_sts_ct_segmentation), (x,y,z) 64x64x32"),
}

_register(PROJECT_PRESETS, axes="xyz")

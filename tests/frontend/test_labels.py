"""nfncompile.frontend.labels: the abstract values of the symmetry analysis."""

from __future__ import annotations

from nfncompile.frontend.labels import (
    UNIFORM,
    Prod,
    Seg,
    TensorLabels,
    is_plain,
    label_width,
    segments,
    tensors,
)


def test_seg_width_counts_flattened_positions():
    assert Seg(3, 0, 4).width == 4
    assert Seg(3, 0, 4, inner=9).width == 36
    assert label_width((Seg(0, 0, 2), Seg(1, 5, 3, inner=2))) == 8


def test_tensor_labels_plain_and_with_label():
    t = TensorLabels.plain((2, 5, 7))
    assert t.labels == (None, None, None) and not t.labelled and t.ndim == 3
    u = t.with_label(1, (Seg(0, 0, 5),))
    assert u.labelled and u.labels[1] == (Seg(0, 0, 5),) and t.labels[1] is None


def test_tensors_finds_labels_in_nested_values():
    a, b = TensorLabels.plain((1,)), TensorLabels.plain((2,))
    assert tensors(((a, 3), {"k": [b, None]})) == [a, b]


def test_products_and_uniform_labels():
    p = Prod(((Seg(0, 0, 4),), None, (Seg(1, 0, 3),)), (4, 2, 3))
    assert p.width == 24 and label_width(p) == 24
    assert list(segments(p)) == [Seg(0, 0, 4), Seg(1, 0, 3)]
    assert list(segments(UNIFORM)) == [] and list(segments(None)) == []
    assert repr(UNIFORM) == "UNIFORM" and type(UNIFORM)() is UNIFORM
    assert is_plain((Seg(0, 0, 2),)) and not is_plain(p) and not is_plain(UNIFORM)

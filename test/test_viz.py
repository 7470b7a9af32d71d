"""Palette and overlays shared by the node, the CLI and training plots."""

import numpy as np
import pytest

from tokenmask_ros import viz


def test_palette_colours_are_distinct_and_stable():
    colors = viz.palette(64)
    assert colors.shape == (64, 3) and colors.dtype == np.uint8
    assert len({tuple(c) for c in colors.tolist()}) == 64
    np.testing.assert_array_equal(colors, viz.palette(64))


def test_colorize_maps_ids_and_paints_invalid_ids_void():
    colors = np.array([[10, 20, 30], [40, 50, 60]], np.uint8)
    labels = np.array([[0, 1], [5, -1]])
    out = viz.colorize(labels, colors, void_color=(1, 2, 3))
    np.testing.assert_array_equal(out, [[[10, 20, 30], [40, 50, 60]], [[1, 2, 3], [1, 2, 3]]])


def test_panoptic_instances_of_one_class_get_different_shades_and_void_is_black():
    class_colors = np.array([[100, 100, 100], [200, 50, 50]], np.uint8)
    panoptic = np.array([[0, 1001], [1002, -1]], np.int32)
    out = viz.colorize_panoptic(panoptic, class_colors)
    np.testing.assert_array_equal(out[0, 0], [100, 100, 100])
    assert not np.array_equal(out[0, 1], out[1, 0])
    np.testing.assert_array_equal(out[1, 1], [0, 0, 0])


def test_overlay_blends_and_checks_shapes():
    image = np.full((2, 2, 3), 100, np.uint8)
    labels = np.full((2, 2, 3), 200, np.uint8)
    np.testing.assert_array_equal(viz.overlay(image, labels, 0.5), np.full((2, 2, 3), 150))
    with pytest.raises(ValueError, match='differ in shape'):
        viz.overlay(image, labels[:1])

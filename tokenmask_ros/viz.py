"""Colours for label images: one palette shared by the node, the CLI and training plots."""

from __future__ import annotations

import cv2
import numpy as np


def palette(num_colors: int, seed: int = 0) -> np.ndarray:
    """``num_colors`` well-separated RGB colours, (N, 3) uint8, stable for a given seed.

    Hues step by the golden angle so neighbouring ids never get similar colours.
    """
    if num_colors < 0:
        raise ValueError(f'num_colors must be >= 0, got {num_colors}')
    index = np.arange(num_colors)
    hue = ((index * 0.618033988749895 + seed * 0.1) % 1.0) * 179
    saturation = 160 + (index * 37 % 96)
    value = 170 + (index * 53 % 86)
    hsv = np.stack([hue, saturation, value], axis=-1).astype(np.uint8)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def colorize(labels: np.ndarray, colors: np.ndarray, void_color=(0, 0, 0)) -> np.ndarray:
    """Map an integer label image to RGB through ``colors``; out-of-range ids get ``void_color``."""
    colors = np.asarray(colors, np.uint8)
    table = np.vstack([colors, np.asarray(void_color, np.uint8)[None]])
    index = np.where((labels >= 0) & (labels < len(colors)), labels, len(colors))
    return table[index]


def colorize_panoptic(panoptic: np.ndarray, class_colors: np.ndarray,
                      label_divisor: int = 1000) -> np.ndarray:
    """RGB image of panoptic ids: each class in its colour, instances in shades of it."""
    ids, inverse = np.unique(panoptic, return_inverse=True)
    classes = np.where(ids >= 0, ids // label_divisor, -1)
    instances = np.where(ids >= 0, ids % label_divisor, 0)
    base = colorize(classes, class_colors).astype(np.int16)
    # Shift each instance's shade by a signed, id-dependent amount; stuff keeps its colour.
    shift = np.where(instances > 0, ((instances * 47) % 120) - 60, 0)[:, None]
    shades = np.clip(base + shift, 0, 255).astype(np.uint8)
    shades[ids < 0] = 0
    return shades[inverse.reshape(panoptic.shape)]


def overlay(image: np.ndarray, color_labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colourised label image over an RGB image (same size) for display."""
    if image.shape != color_labels.shape:
        raise ValueError(f'image {image.shape} and labels {color_labels.shape} differ in shape')
    return cv2.addWeighted(image, 1.0 - alpha, color_labels, alpha, 0.0)


def class_colors(classes, num_classes: int | None = None) -> np.ndarray:
    """(C, 3) uint8 colours of a model's classes: their own where set, else the palette's.

    ``classes``: :class:`~tokenmask_ros.model.ClassInfo`-like objects with ``color``
    (may be ``None``), or empty with ``num_classes`` given.
    """
    classes = list(classes or ())
    count = len(classes) if classes else int(num_classes or 0)
    colors = palette(count).copy()
    for index, info in enumerate(classes):
        if getattr(info, 'color', None) is not None:
            colors[index] = np.asarray(info.color, np.uint8)
    return colors

"""Colours for label images: one palette shared by the node, the CLI and training plots."""

from __future__ import annotations

import cv2
import numpy as np

from tokenmask_ros.defaults import LABEL_DIVISOR, OVERLAY_ALPHA


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


# --------------------------------------------------------------------------- readable overlays

CONTOUR_COLOR = (255, 255, 255)
LABEL_BACKGROUND = (24, 24, 24)
TEXT_COLOR = (255, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def segment_boundaries(panoptic: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels with a 4-neighbour of another panoptic id (both sides of an edge).

    Marking both sides gives 2 px lines that stay visible after a video codec blurs them.
    """
    edges = np.zeros(panoptic.shape, bool)
    horizontal = panoptic[:, 1:] != panoptic[:, :-1]
    edges[:, 1:] |= horizontal
    edges[:, :-1] |= horizontal
    vertical = panoptic[1:] != panoptic[:-1]
    edges[1:] |= vertical
    edges[:-1] |= vertical
    return edges


def class_index(panoptic: np.ndarray, num_classes: int, label_divisor: int) -> np.ndarray:
    """(H, W) index into a ``num_classes + 2`` table: 0 void, 1 + class, last = unknown class."""
    index = np.floor_divide(panoptic, label_divisor)
    index += 1
    return np.clip(index, 0, num_classes + 1, out=index)


def fill_classes(rgb: np.ndarray, index: np.ndarray, colors: np.ndarray,
                 alpha: float) -> np.ndarray:
    """``rgb`` with every known-class pixel blended towards its class colour; void untouched."""
    # One uint32 per colour: a 4-byte gather is several times faster than a (H, W, 3) one.
    table = np.zeros((len(colors) + 2, 4), np.uint8)
    table[1:-1, :3] = colors
    packed = np.take(table.view(np.uint32).ravel(), index)
    colored = cv2.cvtColor(packed.view(np.uint8).reshape(*index.shape, 4), cv2.COLOR_RGBA2RGB)
    blended = cv2.addWeighted(rgb, 1.0 - alpha, colored, alpha, 0.0)
    keep = (index == 0) | (index == len(table) - 1)
    cv2.copyTo(rgb, keep.view(np.uint8), blended)
    return blended


def paint(image: np.ndarray, mask: np.ndarray, color) -> None:
    """Set the pixels of bool ``mask`` to ``color`` in place."""
    image[mask] = np.asarray(color, np.uint8)


def text_style(shape) -> tuple[float, int]:
    """Font scale and thickness that read at this image size (about 0.5 at 640x480)."""
    scale = float(np.clip(min(shape[:2]) / 900, 0.35, 1.2))
    return scale, 1 if scale < 0.8 else 2


def _name(class_names, class_id: int) -> str:
    return class_names[class_id] if 0 <= class_id < len(class_names) else f'class_{class_id}'


def _overlaps(box, boxes) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in boxes)


def _place(center, size, shape, taken) -> tuple[int, int, int, int]:
    """A label box near ``center`` inside the image, moved up or down if it hides another."""
    (width, height), (rows, cols) = size, shape[:2]
    x0 = int(np.clip(center[0] - width // 2, 0, max(cols - width, 0)))
    boxes = []
    for dy in (0, -height - 1, height + 1, -2 * height - 2, 2 * height + 2):
        y0 = int(np.clip(center[1] - height // 2 + dy, 0, max(rows - height, 0)))
        boxes.append((x0, y0, x0 + width, y0 + height))
        if not _overlaps(boxes[-1], taken):
            return boxes[-1]
    return boxes[0]  # crowded: on the centre, over the others


def draw_labels(image: np.ndarray, segments, class_names, class_colors: np.ndarray,
                label_divisor: int, label_text=None) -> list[tuple[int, int, int, int]]:
    """Write a label on a dark box at each thing's box centre, in place; returns the boxes.

    ``label_text(segment, class_name) -> str`` chooses the text (default: the class name),
    so a tracker can append its track number. Larger things are placed first.
    """
    scale, thickness = text_style(image.shape)
    pad = max(2, round(4 * scale))
    taken = []
    things = [s for s in segments if s.is_thing]
    for segment in sorted(things, key=lambda s: -s.bbox[2] * s.bbox[3]):
        class_id = int(segment.id) // label_divisor
        name = _name(class_names, class_id)
        text = label_text(segment, name) if label_text else name
        (tw, th), baseline = cv2.getTextSize(text, FONT, scale, thickness)
        x, y, w, h = segment.bbox
        box = _place((x + w // 2, y + h // 2), (tw + 2 * pad, th + baseline + 2 * pad),
                     image.shape, taken)
        taken.append(box)
        color = (tuple(int(c) for c in class_colors[class_id])
                 if 0 <= class_id < len(class_colors) else TEXT_COLOR)
        cv2.rectangle(image, box[:2], (box[2] - 1, box[3] - 1), LABEL_BACKGROUND, -1)
        cv2.rectangle(image, box[:2], (box[2] - 1, box[3] - 1), color, 1)
        cv2.putText(image, text, (box[0] + pad, box[3] - pad - baseline), FONT, scale,
                    TEXT_COLOR, thickness, cv2.LINE_AA)
    return taken


def legend_size(names, shape) -> tuple[int, int, int]:
    """(width, height, row height) of a legend listing ``names``."""
    scale, thickness = text_style(shape)
    sizes = [cv2.getTextSize(name, FONT, scale, thickness) for name in names]
    pad = max(4, round(8 * scale))
    row = max(h + b for (_, h), b in sizes) + pad
    # margin, swatch (row - pad), gap, text, margin
    width = row // 3 + row - pad + row // 3 + max(w for (w, _), _ in sizes) + row // 3
    return width, row * len(names) + row // 3, row


def _legend_corner(panoptic: np.ndarray, size, label_boxes, label_divisor: int):
    """Top-left corner of the image corner where the legend hides the fewest thing pixels."""
    (width, height), (rows, cols) = size, panoptic.shape
    margin = 4
    corners = [(cols - width - margin, margin), (margin, margin),
               (cols - width - margin, rows - height - margin), (margin, rows - height - margin)]
    costs = []
    for x, y in corners:
        x, y = max(x, 0), max(y, 0)
        patch = panoptic[y:y + height, x:x + width]
        thing_pixels = np.count_nonzero((patch >= 0) & (patch % label_divisor > 0))
        hidden_labels = sum(_overlaps((x, y, x + width, y + height), [b]) for b in label_boxes)
        costs.append(thing_pixels + hidden_labels * width * height)
    x, y = corners[int(np.argmin(costs))]
    return max(x, 0), max(y, 0)


def draw_legend(image: np.ndarray, panoptic: np.ndarray, class_ids, class_names,
                class_colors: np.ndarray, label_divisor: int, label_boxes=()) -> tuple:
    """Swatch + name of each class in ``class_ids`` on a darkened corner, in place.

    Returns the legend's (x0, y0, x1, y1); ``()`` when there is nothing to list.
    """
    if len(class_ids) == 0:
        return ()
    names = [_name(class_names, int(c)) for c in class_ids]
    width, height, row = legend_size(names, image.shape)
    x, y = _legend_corner(panoptic, (width, height), label_boxes, label_divisor)
    region = image[y:y + height, x:x + width]
    region[:] = (region * 0.35).astype(np.uint8)  # darkened, the scene still shows through
    scale, thickness = text_style(image.shape)
    swatch = row - max(4, round(8 * scale))
    for line, (class_id, name) in enumerate(zip(class_ids, names, strict=True)):
        top = y + row // 3 + line * row
        color = (tuple(int(c) for c in class_colors[class_id])
                 if 0 <= class_id < len(class_colors) else TEXT_COLOR)
        cv2.rectangle(image, (x + row // 3, top), (x + row // 3 + swatch, top + swatch),
                      color, -1)
        cv2.putText(image, name, (x + 2 * (row // 3) + swatch, top + swatch), FONT, scale,
                    TEXT_COLOR, thickness, cv2.LINE_AA)
    return x, y, min(x + width, image.shape[1]), min(y + height, image.shape[0])


def draw_overlay(rgb: np.ndarray, prediction, class_names, class_colors: np.ndarray,
                 alpha: float = OVERLAY_ALPHA, labels: bool = True, legend: bool = True,
                 label_text=None, contour_color=CONTOUR_COLOR) -> np.ndarray:
    """A readable panoptic overlay: class-colour fill, segment contours, labels and a legend.

    ``prediction``: anything with ``panoptic`` (H, W) ids and ``segments`` (``id``,
    ``bbox`` (x, y, w, h), ``is_thing``), e.g. a :class:`~tokenmask_ros.model.Prediction`
    or a synthetic scene; ``label_divisor`` is read from it when it has one. ``alpha`` is
    the fill's opacity: the contours carry the shapes, so the scene stays legible.
    ``label_text(segment, class_name)`` sets each thing's label (default: the class name).
    """
    panoptic = np.asarray(prediction.panoptic)
    if rgb.shape != (*panoptic.shape, 3):
        raise ValueError(f'image {rgb.shape} and panoptic map {panoptic.shape} differ in size')
    divisor = int(getattr(prediction, 'label_divisor', 0) or LABEL_DIVISOR)
    colors = np.asarray(class_colors, np.uint8).reshape(-1, 3)
    index = class_index(panoptic, len(colors), divisor)
    out = fill_classes(rgb, index, colors, float(alpha))
    paint(out, segment_boundaries(panoptic), contour_color)
    boxes = draw_labels(out, prediction.segments, class_names, colors, divisor,
                        label_text) if labels else []
    if legend:
        counts = np.bincount(index.ravel(), minlength=len(colors) + 2)[1:len(colors) + 1]
        draw_legend(out, panoptic, np.flatnonzero(counts), class_names, colors, divisor, boxes)
    return out


# --------------------------------------------------------------------------- tracks and 3D


def track_label_text(label_divisor: int = LABEL_DIVISOR):
    """A ``label_text`` for :func:`draw_overlay` that writes ``"class #N"``, N being the
    instance part of the segment's id (the track number once a tracker renumbered it)."""
    def label(segment, class_name: str) -> str:
        return f'{class_name} #{int(segment.id) % label_divisor}'
    return label


# A light background: dark class colours (navy, grey) stay visible; grid lighter than any.
TOP_VIEW_BACKGROUND = (240, 240, 240)
GRID_COLOR = (212, 212, 212)
AXIS_TEXT_COLOR = (40, 40, 40)


def top_view_extent(points: np.ndarray, boxes=(), margin: float = 0.1
                    ) -> tuple[float, float, float]:
    """``(x_min, x_max, z_max)`` in metres that frames the cloud (2nd..98th percentiles, so a
    few stray depth pixels do not shrink everything) and every box, camera at z = 0."""
    x, z = points['x'], points['z']
    if len(x):
        x_lo, x_hi = np.percentile(x, [2, 98])
        z_hi = float(np.percentile(z, 98))
    else:
        x_lo, x_hi, z_hi = -1.0, 1.0, 1.0
    for box in boxes:
        cx, _, cz = box.center
        sx, _, sz = box.size
        x_lo, x_hi = min(x_lo, cx - sx / 2), max(x_hi, cx + sx / 2)
        z_hi = max(z_hi, cz + sz / 2)
    half = max(abs(x_lo), abs(x_hi), 0.5) * (1 + margin)  # camera centred horizontally
    return -half, half, max(z_hi, 0.5) * (1 + margin)


def draw_top_view(points: np.ndarray, boxes=None, class_names=(), class_colors=None, *,
                  size: tuple[int, int] = (480, 480), extent=None,
                  label_divisor: int = LABEL_DIVISOR, splat: int = 2,
                  stuff_boxes: bool = False) -> np.ndarray:
    """An RGB top view (x right, z = forward up the image) of a labelled cloud with boxes.

    ``points``: a structured array with ``x``, ``y``, ``z`` (metres, camera optical frame)
    and ``class_id`` (e.g. ``depth3d.labelled_points``); each pixel shows its highest point
    (smallest y: y points down) in its class colour, ``splat`` pixels wide. ``boxes``:
    ``{panoptic id: box}`` with ``center`` and ``size`` (``depth3d.Box3D``); things get a
    rectangle and a ``"class #N"`` label, stuff only with ``stuff_boxes``. ``extent``:
    ``(x_min, x_max, z_max)`` metres (default :func:`top_view_extent`); one scale for both
    axes, so shapes keep their proportions. ``size``: (width, height) of the image.
    """
    width, height = size
    boxes = dict(boxes or {})
    colors = np.asarray(class_colors if class_colors is not None else palette(0),
                        np.uint8).reshape(-1, 3)
    x_min, x_max, z_max = extent or top_view_extent(points, boxes.values())
    scale = min((width - 1) / (x_max - x_min), (height - 1) / z_max)  # pixels per metre
    left = (width - 1 - scale * (x_max - x_min)) / 2 - scale * x_min

    def to_pixels(x, z):
        return (np.round(left + scale * np.asarray(x)).astype(np.int64),
                np.round(height - 1 - scale * np.asarray(z)).astype(np.int64))

    image = np.empty((height, width, 3), np.uint8)
    image[:] = TOP_VIEW_BACKGROUND
    for metre in range(1, int(z_max) + 1):  # range rings every metre
        cv2.line(image, (0, int(to_pixels(0, metre)[1])), (width - 1, int(to_pixels(0, metre)[1])),
                 GRID_COLOR, 1)
    origin = tuple(int(v) for v in to_pixels(0.0, 0.0))
    cv2.line(image, (origin[0], 0), (origin[0], height - 1), GRID_COLOR, 1)

    cols, rows = to_pixels(points['x'], points['z'])
    inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    class_id = np.asarray(points['class_id'], np.int64)[inside]
    cols, rows, up = cols[inside], rows[inside], np.asarray(points['y'])[inside]
    pixel = rows * width + cols
    order = np.lexsort((up, pixel))  # per pixel, the smallest y (the top) first
    first = np.ones(len(order), bool)
    first[1:] = pixel[order][1:] != pixel[order][:-1]
    top = order[first]
    table = np.vstack([colors, np.full((1, 3), 128, np.uint8)])  # unknown class: grey
    shade = table[np.where((class_id[top] >= 0) & (class_id[top] < len(colors)),
                           class_id[top], len(colors))]
    for dy in range(splat):  # a small square per point: a loop over offsets, not pixels
        for dx in range(splat):
            r, c = rows[top] - dy, cols[top] + dx
            ok = (r >= 0) & (c < width)
            image[r[ok], c[ok]] = shade[ok]

    scale_text, thickness = text_style(image.shape)
    taken = []
    for panoptic_id, box in sorted(boxes.items()):
        class_id, instance = divmod(int(panoptic_id), label_divisor)
        if panoptic_id < 0 or (instance == 0 and not stuff_boxes):
            continue
        (cx, _, cz), (sx, _, sz) = box.center, box.size
        x0, z1 = to_pixels(cx - sx / 2, cz - sz / 2)
        x1, z0 = to_pixels(cx + sx / 2, cz + sz / 2)
        color = (tuple(int(v) for v in colors[class_id]) if 0 <= class_id < len(colors)
                 else AXIS_TEXT_COLOR)
        cv2.rectangle(image, (int(x0), int(z0)), (int(x1), int(z1)), color, 2 if instance else 1)
        name = _name(class_names, class_id)
        text = f'{name} #{instance}' if instance else name
        (tw, th), baseline = cv2.getTextSize(text, FONT, scale_text, thickness)
        pad = 2
        label = _place(((int(x0) + int(x1)) // 2, int(z0) - th), (tw + 2 * pad,
                       th + baseline + 2 * pad), image.shape, taken)
        taken.append(label)
        cv2.rectangle(image, label[:2], (label[2] - 1, label[3] - 1), LABEL_BACKGROUND, -1)
        cv2.putText(image, text, (label[0] + pad, label[3] - pad - baseline), FONT, scale_text,
                    TEXT_COLOR, thickness, cv2.LINE_AA)
    cv2.drawMarker(image, origin, AXIS_TEXT_COLOR, cv2.MARKER_TRIANGLE_UP, 12, 2)
    cv2.putText(image, f'top view (x right, z forward), grid 1 m, {len(points)} points',
                (6, 16), FONT, 0.4, AXIS_TEXT_COLOR, 1, cv2.LINE_AA)
    return image

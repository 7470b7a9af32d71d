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


# --------------------------------------------------------------------------- draw_overlay

NAMES = ['floor', 'disc', 'box', 'unused']
COLORS = np.array([[30, 200, 30], [200, 30, 30], [30, 30, 200], [200, 200, 30]], np.uint8)


def _prediction(height=120, width=160):
    """Floor (stuff) with two discs (class 1) and a box (class 2); a void strip on the left."""
    from tokenmask_ros.model.postprocess import Prediction, Segment

    panoptic = np.zeros((height, width), np.int32)  # floor = 0 * 1000 + 0
    panoptic[:, :6] = -1
    things = {1001: (20, 20, 30, 30), 1002: (70, 60, 30, 40), 2001: (110, 15, 40, 25)}
    for seg_id, (x, y, w, h) in things.items():
        panoptic[y:y + h, x:x + w] = seg_id
    segments = [Segment(0, 0, 0.9, (6, 0, width - 6, height), int((panoptic == 0).sum()), False)]
    segments += [Segment(i, i // 1000, 0.9, box, box[2] * box[3], True)
                 for i, box in things.items()]
    semantic = np.where(panoptic >= 0, panoptic // 1000, 255).astype(np.uint8)
    return Prediction(panoptic, semantic, segments)


def _image(height=120, width=160):
    return np.full((height, width, 3), 128, np.uint8)


def test_boundaries_mark_both_sides_of_every_id_change_and_nothing_else():
    panoptic = np.zeros((6, 7), np.int32)
    panoptic[2:4, 3:5] = 7
    edges = viz.segment_boundaries(panoptic)
    differs = np.zeros_like(edges)
    padded = np.pad(panoptic, 1, mode='edge')
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        differs |= padded[dy:dy + 6, dx:dx + 7] != panoptic
    np.testing.assert_array_equal(edges, differs)
    assert edges[2:4, 3:5].all() and edges.sum() == 4 + 8  # the square and its 4-neighbours


def test_overlay_fills_classes_at_alpha_draws_contours_and_leaves_void_alone():
    prediction, image = _prediction(), _image()
    out = viz.draw_overlay(image, prediction, NAMES, COLORS, alpha=0.25, labels=False,
                           legend=False)
    edges = viz.segment_boundaries(prediction.panoptic)
    assert (out[edges] == viz.CONTOUR_COLOR).all()
    interior = ~edges
    void = (prediction.panoptic < 0) & interior
    np.testing.assert_array_equal(out[void], image[void])
    box = (prediction.panoptic == 2001) & interior
    expected = np.round(0.75 * 128 + 0.25 * COLORS[2].astype(float))
    assert np.abs(out[box].astype(float) - expected).max() <= 1
    # No contour colour away from boundaries (the fills are not white).
    assert not (out[interior] == viz.CONTOUR_COLOR).all(axis=-1).any()


def test_legend_shows_a_swatch_for_exactly_the_classes_present():
    prediction = _prediction()
    out = viz.draw_overlay(_image(), prediction, NAMES, COLORS, alpha=0.3, labels=False)
    # Only the legend's swatches use the pure class colours (the fill is blended).
    swatch_pixels = [(out == color).all(axis=-1).sum() for color in COLORS]
    assert all(count >= 16 for count in swatch_pixels[:3]), swatch_pixels
    assert swatch_pixels[3] == 0  # 'unused' is in the model but not in the image
    without = viz.draw_overlay(_image(), prediction, NAMES, COLORS, alpha=0.3, labels=False,
                               legend=False)
    assert all((without == color).all(axis=-1).sum() == 0 for color in COLORS)


def test_legend_avoids_the_corner_with_things_and_the_labels():
    panoptic = np.zeros((120, 160), np.int32)
    panoptic[:50, 100:] = 1001  # a thing filling the top-right corner
    image = _image()
    box = viz.draw_legend(image, panoptic, [0, 1], NAMES, COLORS, 1000)
    assert box[0] < 80 and box[1] < 60  # moved to the (empty) top-left
    taken = [(0, 0, 60, 60)]  # a label there too: now a bottom corner
    box = viz.draw_legend(_image(), panoptic, [0, 1], NAMES, COLORS, 1000, taken)
    assert box[3] > 60


def test_each_thing_gets_a_label_with_text_at_its_centre_and_stuff_gets_none():
    prediction = _prediction(240, 320)
    image = np.zeros((240, 320, 3), np.uint8)
    out = image.copy()
    boxes = viz.draw_labels(out, prediction.segments, NAMES, COLORS, 1000)
    assert len(boxes) == 3  # the floor is stuff: in the legend, not labelled
    for segment in prediction.segments[1:]:
        x, y, w, h = segment.bbox
        cx, cy = x + w // 2, y + h // 2
        window = out[max(cy - 12, 0):cy + 12, max(cx - 30, 0):cx + 30]
        assert (window.min(axis=-1) > 200).sum() >= 10  # white text strokes
        assert (window == viz.LABEL_BACKGROUND).all(axis=-1).sum() >= 10  # on a dark box
    for a in range(3):  # label boxes never overlap where there is room to move them
        for b in range(a + 1, 3):
            assert not viz._overlaps(boxes[a], [boxes[b]])


def test_label_text_is_a_parameter_so_a_track_number_can_be_appended():
    prediction = _prediction(240, 320)
    plain = viz.draw_labels(np.zeros((240, 320, 3), np.uint8), prediction.segments, NAMES,
                            COLORS, 1000)
    tracked = viz.draw_labels(np.zeros((240, 320, 3), np.uint8), prediction.segments, NAMES,
                              COLORS, 1000, lambda s, name: f'{name} #{s.id % 1000 + 40}')
    widths = [[b[2] - b[0] for b in boxes] for boxes in (plain, tracked)]
    assert all(t > p for p, t in zip(*widths, strict=True))


def test_overlay_reads_synthetic_scenes_and_rejects_mismatched_sizes():
    from tokenmask_ros.synthetic import SYNTHETIC_CLASSES, SceneGenerator

    scene = SceneGenerator(height=96, width=128, seed=3).scene(0)
    colors = np.array([c.color for c in SYNTHETIC_CLASSES], np.uint8)
    names = [c.name for c in SYNTHETIC_CLASSES]
    out = viz.draw_overlay(scene.image, scene, names, colors)
    assert out.shape == scene.image.shape and not np.array_equal(out, scene.image)
    with pytest.raises(ValueError, match='differ in size'):
        viz.draw_overlay(scene.image[:10], scene, names, colors)


# --------------------------------------------------------------------------- tracks and 3D

POINT_DTYPE = [('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('rgb', '<f4'), ('class_id', '<i4'),
               ('panoptic_id', '<i4')]


class Box:
    def __init__(self, center, size):
        self.center, self.size = center, size


def cloud(rows):
    """A structured cloud as depth3d.labelled_points returns it, from (x, y, z, class)."""
    points = np.zeros(len(rows), POINT_DTYPE)
    for index, name in enumerate(('x', 'y', 'z', 'class_id')):
        points[name] = [row[index] for row in rows]
    return points


def test_track_label_text_appends_the_instance_number():
    label = viz.track_label_text(1000)

    class Segment:
        id = 2017
    assert label(Segment(), 'car') == 'car #17'


def test_top_view_puts_points_where_their_x_and_z_say_and_the_top_one_wins():
    colors = np.array([[200, 0, 0], [0, 200, 0], [0, 0, 200]], np.uint8)
    points = cloud([(1.0, 0.5, 2.25, 0),     # -> column 200 + 100, row 500 - 225
                    (1.0, -0.5, 2.25, 2),    # same pixel, higher (y points down): wins
                    (-1.5, 0.0, 4.5, 1),     # -> column 50, row 50
                    (9.0, 0.0, 1.0, 1)])     # outside the extent: dropped, no error
    # 100 pixels per metre: x -2..2 -> columns 0..400, z 0..5 -> rows 500..0.
    image = viz.draw_top_view(points, {}, ['a', 'b', 'c'], colors, size=(401, 501),
                              extent=(-2.0, 2.0, 5.0), splat=1)
    assert image.shape == (501, 401, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[275, 300], colors[2])
    np.testing.assert_array_equal(image[50, 50], colors[1])
    for color in colors:  # nothing else in a class colour
        count = np.count_nonzero((image == color).all(-1))
        assert count == (1 if tuple(color) != (200, 0, 0) else 0)


def test_top_view_draws_thing_boxes_with_class_and_track_labels_and_skips_stuff():
    colors = np.array([[200, 0, 0], [0, 200, 0]], np.uint8)
    boxes = {1003: Box((0.0, 0.0, 3.0), (1.0, 0.4, 1.0)),  # thing: class 1, track 3
             0: Box((0.0, 0.0, 2.0), (3.8, 0.1, 3.8))}      # stuff (class 0): no box
    image = viz.draw_top_view(cloud([]), boxes, ['floor', 'car'], colors, size=(401, 501),
                              extent=(-2.0, 2.0, 5.0))
    green = (image == colors[1]).all(-1)
    # Box x -0.5..0.5 -> columns 150..250; z 2.5..3.5 -> rows 250..150 (2 px lines).
    assert green[200, 150] and green[200, 250] and green[150, 200] and green[250, 200]
    assert not green[200, 200]  # an outline, not a filled box
    assert not (image == colors[0]).all(-1).any()
    white = (image >= 250).all(-1)
    assert white[100:150, 150:250].sum() > 20  # "car #3" above the box
    with_stuff = viz.draw_top_view(cloud([]), boxes, ['floor', 'car'], colors,
                                   size=(401, 501), extent=(-2.0, 2.0, 5.0), stuff_boxes=True)
    assert (with_stuff == colors[0]).all(-1).any()


def test_top_view_frames_the_cloud_by_itself():
    points = cloud([(x, 0.0, z, 0) for x in np.linspace(-3, 3, 30)
                    for z in np.linspace(1, 8, 30)])
    x_min, x_max, z_max = viz.top_view_extent(points)
    assert x_min <= -2.8 and x_max >= 2.8 and x_min == -x_max and z_max >= 7.8
    image = viz.draw_top_view(points, None, ['a'], np.array([[0, 250, 0]], np.uint8))
    green = np.argwhere((image == (0, 250, 0)).all(-1))
    assert len(green) > 500
    # z 0..8.8 m fills the 480 rows (54.4 px/m); x is centred on the camera at column 240.
    assert green[:, 0].min() < 60 and green[:, 0].max() > 410
    assert abs(green[:, 1].min() + green[:, 1].max() - 480) <= 2

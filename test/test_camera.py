"""PinholeCamera: intrinsics from CameraInfo, resizing, and pixel <-> metre maths."""

import math

import numpy as np
import pytest

from tokenmask_ros.camera import PinholeCamera


def test_from_fov_centres_the_principal_point_with_square_pixels():
    camera = PinholeCamera.from_fov(320, 240, 90.0)
    assert camera.fx == camera.fy == pytest.approx(160.0)
    assert (camera.cx, camera.cy, camera.width, camera.height) == (159.5, 119.5, 320, 240)
    # The image's left and right edges (pixel borders) are 45 degrees off the axis.
    left = camera.back_project(-0.5, camera.cy, 1.0)
    assert math.degrees(math.atan2(-left[0], left[2])) == pytest.approx(45.0)


def test_camera_info_k_round_trips_and_bad_k_is_refused():
    camera = PinholeCamera(500.0, 510.0, 319.5, 239.5, 640, 480)
    assert PinholeCamera.from_camera_info(camera.k, 640, 480) == camera
    assert camera.p[:3] == [500.0, 0.0, 319.5] and camera.p[3] == 0.0
    bad = [
        ([500.0, 0, 320, 0, 510, 240, 0, 0], '9 numbers'),
        ([0.0, 0, 320, 0, 510, 240, 0, 0, 1], 'non-positive focal'),
        ([500.0, 0, 320, 0, -1, 240, 0, 0, 1], 'non-positive focal'),
        ([500.0, 0, float('nan'), 0, 510, 240, 0, 0, 1], 'NaN or infinite'),
        ([500.0, 0, 320, 0, float('inf'), 240, 0, 0, 1], 'NaN or infinite'),
        (['a'] * 9, '9 numbers'),
    ]
    for k, message in bad:
        with pytest.raises(ValueError, match=message):
            PinholeCamera.from_camera_info(k, 640, 480)
    with pytest.raises(ValueError, match='size must be positive'):
        PinholeCamera.from_camera_info(camera.k, 0, 480)


def test_back_project_and_project_are_inverse_and_vectorised():
    camera = PinholeCamera(400.0, 380.0, 150.0, 100.0, 300, 200)
    u, v = np.meshgrid(np.arange(0, 300, 37.0), np.arange(0, 200, 29.0))
    z = 0.5 + u / 100
    points = camera.back_project(u, v, z)
    assert points.shape == (*u.shape, 3)
    np.testing.assert_allclose(points[..., 2], z)
    np.testing.assert_allclose(camera.project(points), np.stack([u, v], -1), atol=1e-9)
    np.testing.assert_allclose(camera.back_project(150.0, 100.0, 2.0), [0.0, 0.0, 2.0])


def test_scaled_keeps_the_same_rays():
    camera = PinholeCamera(400.0, 380.0, 159.5, 119.5, 320, 240)
    half = camera.scaled(160, 120)
    assert (half.width, half.height) == (160, 120)
    assert (half.fx, half.fy) == (200.0, 190.0)
    # The centre of full-size pixel block (2u, 2v)..(2u+1, 2v+1) is half-size pixel (u, v).
    ray_full = camera.back_project(2 * 10 + 0.5, 2 * 7 + 0.5, 1.0)
    np.testing.assert_allclose(half.back_project(10, 7, 1.0), ray_full)
    with pytest.raises(ValueError, match='positive'):
        camera.scaled(0, 10)

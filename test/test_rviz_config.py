"""config/segment.rviz shows the 3D outputs: the labelled cloud and the markers."""

from __future__ import annotations

import re

import yaml
from conftest import REPO_ROOT


def rviz_config() -> dict:
    return yaml.safe_load((REPO_ROOT / 'config' / 'segment.rviz').read_text())


def test_rviz_shows_the_labelled_cloud_in_its_colours_and_the_markers():
    displays = {d['Class']: d for d in rviz_config()['Visualization Manager']['Displays']}
    cloud = displays['rviz_default_plugins/PointCloud2']
    assert cloud['Topic']['Value'] == '/segment_node/points'
    assert cloud['Color Transformer'] == 'RGB8' and cloud['Enabled'] is True
    markers = displays['rviz_default_plugins/MarkerArray']
    assert markers['Topic']['Value'] == '/segment_node/markers' and markers['Enabled'] is True


def test_rviz_fixed_frame_is_the_camera_frame_of_image_source_and_the_demo():
    fixed = rviz_config()['Visualization Manager']['Global Options']['Fixed Frame']
    source = yaml.safe_load((REPO_ROOT / 'config' / 'image_source.yaml').read_text())
    assert fixed == source['image_source']['ros__parameters']['frame_id']
    demo = (REPO_ROOT / 'tokenmask_ros' / 'ros' / 'demo.py').read_text()
    assert re.search(rf"^FRAME_ID = '{re.escape(fixed)}'", demo, re.M)

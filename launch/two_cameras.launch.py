"""One segment_node per camera, in namespaces cam0 and cam1 (each loads its own model).

    ros2 launch tokenmask_ros two_cameras.launch.py \\
        cam0_image:=/front/image_raw cam1_image:=/rear/image_raw

Outputs: /cam0/segment_node/{panoptic,semantic,overlay,detections,label_info} and the same
under /cam1; both report on /diagnostics as "/camN/segment_node: segmentation".
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

CAMERAS = ('cam0', 'cam1')


def generate_launch_description():
    config = os.path.join(get_package_share_directory('tokenmask_ros'), 'config',
                          'segment.yaml')
    arguments = [
        DeclareLaunchArgument('params_file', default_value=config,
                              description='parameter file shared by both nodes'),
        *(DeclareLaunchArgument(f'{camera}_image', default_value=f'/{camera}/image_raw',
                                description=f'topic of camera {camera}')
          for camera in CAMERAS),
    ]
    nodes = [Node(
        package='tokenmask_ros',
        executable='segment_node',
        name='segment_node',
        namespace=camera,
        parameters=[LaunchConfiguration('params_file')],
        remappings=[('image', LaunchConfiguration(f'{camera}_image')),
                    ('image/compressed', [LaunchConfiguration(f'{camera}_image'),
                                          '/compressed'])],
        output='screen',
    ) for camera in CAMERAS]
    return LaunchDescription([*arguments, *nodes])

"""Segment a camera topic with segment_node; optionally show the result in rviz2.

    ros2 launch tokenmask_ros segment.launch.py image:=/camera/image_raw use_rviz:=true

Arguments: image (the camera topic; `<image>/compressed` with input_transport:=compressed),
namespace, params_file (default config/segment.yaml), model and backend ('' = as in the
parameter file), use_rviz.
"""

import os
import tempfile

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

SHARE = get_package_share_directory('tokenmask_ros')


def rviz_config(namespace: str) -> str:
    """config/segment.rviz, with its topics moved into ``namespace`` when there is one."""
    path = os.path.join(SHARE, 'config', 'segment.rviz')
    namespace = namespace.strip('/')
    if not namespace:
        return path
    with open(path) as file:
        text = file.read().replace('/segment_node/', f'/{namespace}/segment_node/')
    with tempfile.NamedTemporaryFile('w', suffix='.rviz', delete=False) as file:
        file.write(text)
    return file.name


def launch_setup(context):
    value = {name: LaunchConfiguration(name).perform(context)
             for name in ('image', 'namespace', 'params_file', 'model', 'backend', 'use_rviz')}
    overrides = {name: value[name] for name in ('model', 'backend') if value[name]}
    nodes = [Node(
        package='tokenmask_ros',
        executable='segment_node',
        name='segment_node',
        namespace=value['namespace'],
        parameters=[value['params_file'], overrides],
        remappings=[('image', value['image']),
                    ('image/compressed', value['image'] + '/compressed')],
        output='screen',
    )]
    if value['use_rviz'].lower() in ('true', '1', 'yes'):
        nodes.append(Node(package='rviz2', executable='rviz2', name='rviz2',
                          arguments=['-d', rviz_config(value['namespace'])], output='screen'))
    return nodes


def generate_launch_description():
    arguments = [
        DeclareLaunchArgument('image', default_value='/camera/image_raw',
                              description='camera topic (sensor_msgs/Image)'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of segment_node and its outputs'),
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(SHARE, 'config', 'segment.yaml'),
                              description='parameter file of segment_node'),
        DeclareLaunchArgument('model', default_value='',
                              description='model file; empty = the parameter file\'s'),
        DeclareLaunchArgument('backend', default_value='',
                              description='auto, tensorrt, onnxruntime or torch; empty = '
                                          'the parameter file\'s'),
        DeclareLaunchArgument('use_rviz', default_value='false',
                              description='start rviz2 with config/segment.rviz'),
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=launch_setup)])

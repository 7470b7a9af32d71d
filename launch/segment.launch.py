"""Segment a camera topic with segment_node; optionally show the result in rviz2.

    ros2 launch tokenmask_ros segment.launch.py image:=/camera/image_raw use_rviz:=true

Arguments: image (the camera topic; `<image>/compressed` with input_transport:=compressed),
namespace, params_file (default config/segment.yaml), model and backend ('' = as in the
parameter file), use_rviz, lifecycle (true: a managed node that starts unconfigured; drive
it with `ros2 lifecycle set /segment_node configure` then `activate`, or a lifecycle
manager).
"""

import os
import tempfile

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

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


def is_true(text: str) -> bool:
    return text.strip().lower() in ('true', '1', 'yes')


def launch_setup(context):
    value = {name: LaunchConfiguration(name).perform(context)
             for name in ('image', 'namespace', 'params_file', 'model', 'backend', 'use_rviz',
                          'lifecycle')}
    managed = is_true(value['lifecycle'])
    overrides = {name: value[name] for name in ('model', 'backend') if value[name]}
    overrides['lifecycle'] = managed
    # A managed node needs the LifecycleNode action (name and namespace are required there)
    # so that launch can follow its state and send it transitions.
    node_action = LifecycleNode if managed else Node
    nodes = [node_action(
        package='tokenmask_ros',
        executable='segment_node',
        name='segment_node',
        namespace=value['namespace'],
        parameters=[value['params_file'], overrides],
        remappings=[('image', value['image']),
                    ('image/compressed', value['image'] + '/compressed')],
        output='screen',
    )]
    if is_true(value['use_rviz']):
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
        DeclareLaunchArgument('lifecycle', default_value='false',
                              description='true: segment_node as a managed (lifecycle) node '
                                          'that starts unconfigured and waits for '
                                          '~/change_state'),
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=launch_setup)])

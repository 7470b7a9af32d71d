"""``segment_node`` as a managed (lifecycle) node, driven over real DDS as a real process.

A test client calls the standard ``~/change_state`` and ``~/get_state`` services: a configure
with a missing model fails and leaves the node unconfigured until the parameter is fixed;
then configure, activate (frames answered), deactivate (the image subscription is gone and
frames go unanswered), activate again, cleanup and shutdown. A plain start has no lifecycle
services at all.
"""

from __future__ import annotations

import signal

import pytest
from conftest import save_tiny_checkpoint, spin_until

pytestmark = pytest.mark.dds

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('vision_msgs.msg')
lifecycle_msgs = pytest.importorskip('lifecycle_msgs')
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from test_node_hardening import START_TIMEOUT_S, NodeProcess  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from tokenmask_ros.ros.conversions import numpy_to_image  # noqa: E402
from tokenmask_ros.synthetic import SceneGenerator  # noqa: E402

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
FRAME = SceneGenerator(height=48, width=64, seed=3).scene(0).image
NAMESPACE = '/t_lifecycle'
NODE = f'{NAMESPACE}/segment_node'


class LifecycleClient:
    """The test's node: lifecycle and parameter clients, an image publisher, a detections
    collector keyed by the frame's stamp."""

    def __init__(self):
        self.node = rclpy.create_node('lifecycle_tester', namespace=NAMESPACE)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.change_state = self.node.create_client(ChangeState, f'{NODE}/change_state')
        self.get_state = self.node.create_client(GetState, f'{NODE}/get_state')
        self.set_parameters = self.node.create_client(SetParameters, f'{NODE}/set_parameters')
        self.detections: dict[int, Detection2DArray] = {}
        self.node.create_subscription(
            Detection2DArray, f'{NODE}/detections',
            lambda msg: self.detections.__setitem__(msg.header.stamp.sec, msg), RELIABLE)
        self.publisher = self.node.create_publisher(Image, f'{NAMESPACE}/image', RELIABLE)
        self._stamp = 0

    def call(self, client, request, timeout: float = START_TIMEOUT_S):
        assert spin_until(self.executor, client.service_is_ready, START_TIMEOUT_S), \
            f'{client.srv_name} never appeared'
        future = client.call_async(request)
        assert spin_until(self.executor, future.done, timeout), f'{client.srv_name}: no answer'
        return future.result()

    def transition(self, transition_id: int) -> bool:
        request = ChangeState.Request()
        request.transition.id = transition_id
        return self.call(self.change_state, request).success

    def state(self) -> str:
        return self.call(self.get_state, GetState.Request()).current_state.label

    def set_string(self, name: str, value: str) -> bool:
        parameter = Parameter(name=name, value=ParameterValue(
            type=ParameterType.PARAMETER_STRING, string_value=value))
        [result] = self.call(self.set_parameters,
                             SetParameters.Request(parameters=[parameter])).results
        return result.successful

    def subscribed(self) -> bool:
        return self.publisher.get_subscription_count() > 0

    def publish(self) -> int:
        self._stamp += 1
        msg = numpy_to_image(FRAME, 'rgb8')
        msg.header.stamp.sec = self._stamp
        self.publisher.publish(msg)
        return self._stamp

    def answered(self) -> bool:
        """A frame sent now gets its detections (re-sent until one is answered, since a
        frame published before discovery completes may be lost)."""
        for _ in range(60):
            stamp = self.publish()
            if spin_until(self.executor, lambda s=stamp: s in self.detections, 2.0):
                return True
        return False

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


@pytest.fixture()
def managed(rclpy_context, tmp_path):
    """A lifecycle segment_node process whose model does not exist yet, and a client."""
    model = save_tiny_checkpoint(tmp_path / 'tiny.safetensors')
    missing = tmp_path / 'missing.safetensors'
    process = NodeProcess(tmp_path, NAMESPACE, '-p', 'lifecycle:=true',
                          '-p', f'model:={missing}', '-p', 'backend:=torch',
                          '-p', 'device:=cpu', '-p', 'image_reliability:=reliable',
                          '-p', f'engine_cache_dir:={tmp_path / "cache"}')
    client = LifecycleClient()
    yield process, client, model, missing
    client.close()
    process.close()


def test_lifecycle_transitions_over_dds(managed):
    process, client, model, missing = managed
    assert client.state() == 'unconfigured'
    assert not client.subscribed()  # nothing before configure and activate

    # A missing model: FAILURE with the reason in one log line; the node stays unconfigured.
    assert not client.transition(Transition.TRANSITION_CONFIGURE)
    assert client.state() == 'unconfigured'
    assert process.process.poll() is None
    failures = [line for line in process.output.splitlines() if 'configure failed' in line]
    assert len(failures) == 1 and str(missing.name) in failures[0], process.output

    # Fixed parameter: configure succeeds; inactive means no subscription yet.
    assert client.set_string('model', str(model))
    assert client.transition(Transition.TRANSITION_CONFIGURE)
    assert client.state() == 'inactive'
    assert not client.subscribed()

    assert client.transition(Transition.TRANSITION_ACTIVATE)
    assert client.state() == 'active'
    assert spin_until(client.executor, client.subscribed, 30)
    assert client.answered()

    # Inactive: the image subscription is gone, frames are not answered.
    assert client.transition(Transition.TRANSITION_DEACTIVATE)
    assert client.state() == 'inactive'
    assert spin_until(client.executor, lambda: not client.subscribed(), 30)
    unanswered = [client.publish() for _ in range(5)]
    spin_until(client.executor, lambda: False, 2.0)  # a window for stray outputs
    assert not set(unanswered) & set(client.detections)

    assert client.transition(Transition.TRANSITION_ACTIVATE)
    assert client.answered()

    assert client.transition(Transition.TRANSITION_DEACTIVATE)
    assert client.transition(Transition.TRANSITION_CLEANUP)
    assert client.state() == 'unconfigured'
    assert client.set_string('model', str(missing))  # set-up parameters change when unconfigured
    assert client.set_string('model', str(model))

    assert client.transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
    assert client.state() == 'finalized'
    assert process.process.poll() is None  # finalized, still up until told to exit
    process.process.send_signal(signal.SIGTERM)
    assert process.wait_exit(60) == 0, process.output
    output = process.output
    assert 'Traceback' not in output, output
    assert 'stopped: worker joined, model closed' in output, output


def test_shutdown_from_active_frees_everything(managed):
    process, client, model, _ = managed
    assert client.set_string('model', str(model))
    assert client.transition(Transition.TRANSITION_CONFIGURE)
    assert client.transition(Transition.TRANSITION_ACTIVATE)
    assert client.answered()
    assert client.transition(Transition.TRANSITION_ACTIVE_SHUTDOWN)
    assert client.state() == 'finalized'
    assert spin_until(client.executor, lambda: not client.subscribed(), 30)
    assert 'shutdown: done' in process.output


def test_a_plain_node_has_no_lifecycle_services_and_keeps_its_mode(rclpy_context, tmp_path):
    from rclpy.parameter import Parameter as RclpyParameter

    from tokenmask_ros.ros.segment_node import SegmentNode

    model = save_tiny_checkpoint(tmp_path / 'tiny.safetensors')
    node = SegmentNode(namespace='/t_plain_mode', parameter_overrides=[
        RclpyParameter('model', value=str(model)), RclpyParameter('backend', value='torch'),
        RclpyParameter('device', value='cpu')])
    try:
        services = {name for name, _ in node.get_service_names_and_types_by_node(
            'segment_node', '/t_plain_mode')}
        assert '/t_plain_mode/segment_node/set_parameters' in services
        assert not any(name.endswith(('change_state', 'get_state')) for name in services)
        assert node.segmenter is not None and node.subscription is not None
        [result] = node.set_parameters([RclpyParameter('lifecycle', value=True)])
        assert not result.successful and 'restart the node' in result.reason
        [result] = node.set_parameters([RclpyParameter('model', value='other.onnx')])
        assert not result.successful and 'restart the node to change model' in result.reason
    finally:
        node.destroy_node()
    assert node.segmenter is None

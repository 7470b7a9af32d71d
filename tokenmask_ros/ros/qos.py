"""QoS profiles from parameter strings, shared by every node of the package."""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

RELIABILITY = {
    'reliable': ReliabilityPolicy.RELIABLE,
    'best_effort': ReliabilityPolicy.BEST_EFFORT,
}


def make_qos(reliability: str = 'reliable', depth: int = 1,
             transient_local: bool = False) -> QoSProfile:
    """A keep-last profile; raises ``ValueError`` naming the allowed reliability values."""
    try:
        policy = RELIABILITY[reliability]
    except KeyError:
        raise ValueError(f'reliability must be one of {sorted(RELIABILITY)}, '
                         f'got {reliability!r}') from None
    if depth < 1:
        raise ValueError(f'QoS depth must be >= 1, got {depth}')
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=policy,
        durability=(DurabilityPolicy.TRANSIENT_LOCAL if transient_local
                    else DurabilityPolicy.VOLATILE),
    )

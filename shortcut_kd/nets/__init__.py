"""Architectures and their named tap points."""

from shortcut_kd.nets.alexnet import AlexNet
from shortcut_kd.nets.registry import (
    NetworkSpec,
    build_network,
    get_head_name,
    get_taps,
    list_networks,
    pair_taps,
    register_network,
    resolve_taps,
)
from shortcut_kd.nets.simba_cnn import SimBACNN

__all__ = [
    "AlexNet",
    "NetworkSpec",
    "SimBACNN",
    "build_network",
    "get_head_name",
    "get_taps",
    "list_networks",
    "pair_taps",
    "register_network",
    "resolve_taps",
]

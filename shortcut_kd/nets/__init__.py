"""Architectures, their named tap points, feature capture at the taps and loading their weights."""

from shortcut_kd.nets import capture, checkpoint, registry
from shortcut_kd.nets.alexnet import AlexNet
from shortcut_kd.nets.capture import FeatureCapture
from shortcut_kd.nets.checkpoint import STATE_DICT_KEYS, load_weights, read_state_dict, unwrap
from shortcut_kd.nets.registry import (
    NetworkSpec, build_network, get_head_name, get_taps, list_networks, pair_taps, register_network, resolve_taps,
)
from shortcut_kd.nets.simba_cnn import SimBACNN

__all__ = ["AlexNet", "SimBACNN", *registry.__all__, *capture.__all__, *checkpoint.__all__]

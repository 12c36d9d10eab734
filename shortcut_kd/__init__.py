"""shortcut-kd: stop medical image classifiers from learning shortcuts.

A MONAI-based toolkit: shortcut-injecting transforms, native dataset readers,
intermediate-layer knowledge distillation from a specialist teacher, baselines,
evaluation and MONAI bundles.
"""

__version__ = "0.1.0"

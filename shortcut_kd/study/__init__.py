"""The study harness: a grid of pipeline x shortcut x seed x method run through the bundles, tuned on a
bias-annotated validation split, with paired statistics."""

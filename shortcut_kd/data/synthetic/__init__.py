"""Synthetic datasets written in the native on-disk layouts of CheXpert, ISIC 2017 and SimBA.

The generated trees are read by the same readers as the real downloads, so every pipeline
can run end to end without downloading anything. Phantoms carry a real (if simplified)
finding: a pleural effusion, a melanoma's irregular variegated lesion, a regional brain
atrophy; an ``ood`` variant shifts the acquisition.
"""

from shortcut_kd.data.synthetic.chexpert_like import chest_phantoms, synthesize_chexpert
from shortcut_kd.data.synthetic.generate import DATASETS, default_n, default_size, synthesize
from shortcut_kd.data.synthetic.isic_like import dermoscopy_phantoms, synthesize_isic2017
from shortcut_kd.data.synthetic.simba_like import brain_affine, brain_phantoms, synthesize_simba

__all__ = [
    "DATASETS",
    "brain_affine",
    "brain_phantoms",
    "chest_phantoms",
    "default_n",
    "default_size",
    "dermoscopy_phantoms",
    "synthesize",
    "synthesize_chexpert",
    "synthesize_isic2017",
    "synthesize_simba",
]

"""Scene graph generation on detectron2: Visual Genome (VG150) data, relation heads with the
Motifs, VCTree and Transformer predictors, and the benchmark's evaluation.

Importing the package registers its config keys (``MODEL.ROI_RELATION_HEAD.*``,
``TEST.RELATION.*``, ``DATASETS.VG.*``), datasets (``vg150_*``, ``vgsynth_*``), predictors,
meta-architectures and the mapper / evaluator of its datasets.
"""

from sgg import config, data, modeling, tasks  # noqa: F401  (registration)
from sgg.config import MODES, add_sgg_config

__all__ = ["MODES", "add_sgg_config"]

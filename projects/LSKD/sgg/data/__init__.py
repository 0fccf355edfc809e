"""Scene-graph data: the VG150 loader, the generated VG-format "vgsynth" dataset, their
detectron2 registration and the dataset mapper.

Importing this package registers ``vg150_{train,val,test}`` (files under
``$DETECTRON2_DATASETS/vg``) and ``vgsynth_{train,val,test}`` (generated into the cache on first
load); nothing is read or generated at import.
"""

from sgg.data.mapper import SceneGraphDatasetMapper, filter_duplicate_relations
from sgg.data.register import (
    VG150_DATASET_NAMES,
    VG150_OBJECT_CLASSES,
    VG150_PREDICATES,
    VGSYNTH_DATASET_NAMES,
    configure_vg_datasets,
    default_vg_root,
    register_vg150,
    register_vgsynth,
)
from sgg.data.synthetic_vg import (
    SYNTH_PREDICATES,
    annotate_relations,
    ensure_vgsynth,
    true_predicates,
    vgsynth_dir,
    write_vgsynth,
)
from sgg.data.vg150 import decode_boxes, load_vg150, load_vg150_classes, vg150_files

register_vg150()
register_vgsynth()

__all__ = [
    "SYNTH_PREDICATES",
    "VG150_DATASET_NAMES",
    "VG150_OBJECT_CLASSES",
    "VG150_PREDICATES",
    "VGSYNTH_DATASET_NAMES",
    "SceneGraphDatasetMapper",
    "annotate_relations",
    "configure_vg_datasets",
    "decode_boxes",
    "default_vg_root",
    "ensure_vgsynth",
    "filter_duplicate_relations",
    "load_vg150",
    "load_vg150_classes",
    "register_vg150",
    "register_vgsynth",
    "true_predicates",
    "vg150_files",
    "vgsynth_dir",
    "write_vgsynth",
]

"""Config keys of scene graph generation: ``MODEL.ROI_RELATION_HEAD.*`` (the relation head and its
predictors), ``TEST.RELATION.*`` (evaluation) and ``DATASETS.VG.*`` (Visual Genome files).

Names and defaults follow the standard Scene-Graph-Benchmark configuration (X-101-FPN, VG150), so
that its YAML values carry over; keys it does not have are marked "ours".
"""

from __future__ import annotations

from detectron2.config import CfgNode as CN

from distill.config import register_config_extension

MODES = ("predcls", "sgcls", "sgdet")


@register_config_extension
def add_sgg_config(cfg: CN) -> None:
    """Add the scene-graph keys to ``cfg`` (idempotent)."""
    if "ROI_RELATION_HEAD" in cfg.MODEL:
        return
    _C = cfg.MODEL.ROI_RELATION_HEAD = CN()
    _C.NUM_CLASSES = 150  # object classes (foreground), as MODEL.ROI_HEADS.NUM_CLASSES
    _C.NUM_PREDICATES = 50  # predicate classes; logits have NUM_PREDICATES + 1 (0 = background)
    _C.PREDICTOR = "MotifPredictor"  # SGG_PREDICTOR_REGISTRY name: Motif/VCTree/Transformer
    # The task: PredCls = GT boxes + GT labels, SGCls = GT boxes, SGDet = neither.
    _C.USE_GT_BOX = True
    _C.USE_GT_OBJECT_LABEL = True
    # Freeze the detector (backbone, RPN, box head) and train only the relation head, as the
    # benchmark does after detector pre-training (MODEL.WEIGHTS holds the detector).
    _C.FREEZE_DETECTOR = True
    # Training pair sampling: pairs per image and the largest foreground fraction among them.
    _C.BATCH_SIZE_PER_IMAGE = 1024
    _C.POSITIVE_FRACTION = 0.25
    _C.NUM_SAMPLE_PER_GT_REL = 4  # SGDet: at most this many proposal pairs per GT relation
    _C.ADD_GTBOX_TO_PROPOSAL_IN_TRAIN = True  # SGDet: GT boxes join the proposals in training
    _C.REQUIRE_BOX_OVERLAP = False  # SGDet training: pairs only between overlapping boxes
    _C.MAX_PROPOSALS_PER_IMAGE = 80  # SGDet: detections per image fed to the relation head
    _C.USE_FREQ_BIAS = True  # add log p(predicate | subject class, object class) to the logits
    _C.EMBED_DIM = 200  # object class embedding size (GloVe 200-d in the benchmark)
    # Optional .npy/.pt (NUM_CLASSES, EMBED_DIM) vectors (e.g. GloVe) initialising the class
    # embeddings; "" = learned from a random init (ours: no GloVe offline).
    _C.EMBED_FILE = ""
    _C.CONTEXT_HIDDEN_DIM = 512  # hidden size of the context encoders
    # Pair representation size; the object and union features are as wide as the detector's box
    # head (MODEL.ROI_BOX_HEAD.FC_DIM), whose architecture and weights they start from.
    _C.CONTEXT_POOLING_DIM = 4096
    _C.CONTEXT_DROPOUT_RATE = 0.2  # dropout inside the context LSTMs
    _C.CONTEXT_OBJ_LAYER = 1  # layers of the object-context encoder (Motifs / VCTree)
    _C.CONTEXT_REL_LAYER = 1  # layers of the edge-context encoder (Motifs / VCTree)
    _C.LATER_NMS_PREDICTION_THRES = 0.5  # SGDet test: per-class NMS on the refined labels
    _C.TRANSFORMER = CN()
    _C.TRANSFORMER.DROPOUT_RATE = 0.1
    _C.TRANSFORMER.OBJ_LAYER = 4  # object encoder layers
    _C.TRANSFORMER.REL_LAYER = 2  # edge encoder layers
    _C.TRANSFORMER.NUM_HEAD = 8
    _C.TRANSFORMER.KEY_DIM = 64
    _C.TRANSFORMER.VAL_DIM = 64
    _C.TRANSFORMER.INNER_DIM = 2048  # feed-forward width

    _T = cfg.TEST.RELATION = CN()
    _T.IOU_THRESHOLD = 0.5  # subject and object boxes must both reach it (SGDet)
    # +1-pixel box areas and intersections (maskrcnn-benchmark convention, the benchmark's
    # numbers); False = detectron2's continuous IoU (ours).
    _T.IOU_PLUS_ONE = True
    _T.REQUIRE_OVERLAP = False  # test pairs: all ordered pairs (False) or overlapping only
    _T.TOPK = (20, 50, 100)  # K of R@K, ngR@K, mR@K, zR@K
    # No graph constraint (ngR@K, ng-mR@K, ng-zR@K): the candidate predicates of each pair (its
    # best ones; 1 = the graph-constrained ranking); 0 = all NUM_PREDICATES, the benchmark's
    # (ours). The best 100 candidates of an image are ranked, as in the benchmark.
    _T.NO_GRAPH_PREDICATES_PER_PAIR = 0
    # mR per predicate group by training instances: head > HEAD_MIN, tail < TAIL_MAX, else body.
    _T.HEAD_MIN = 10000
    _T.TAIL_MAX = 500

    _D = cfg.DATASETS.VG = CN()
    _D.BOX_SCALE = 1024  # boxes_<BOX_SCALE> of the h5 file
    _D.NUM_VAL_IMAGES = 5000  # the first train-split images form the val split
    _D.FILTER_EMPTY_RELATIONS = True  # drop images without relations
    _D.FILTER_DUPLICATE_RELATIONS = True  # training: one random predicate per ordered pair
    _D.FILTER_NON_OVERLAP = False  # training: drop relations whose boxes do not intersect

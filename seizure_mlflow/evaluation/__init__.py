"""COCO AP of a detector on a test set, pooled and per video, with a bootstrap over videos (no MLflow here).

``coco_ap``: per-image matches and AP from them (also used by validation AP during training); ``detector``: a
detector run over a test set through Detectron2's ``COCOEvaluator``, and the evidence per video.
"""

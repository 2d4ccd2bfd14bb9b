"""The annotation loop, without MLflow: frames from a video, a folder or a list (``sources``); the champion's
masks on them, detected or carried by the flow between detections (``prelabels``); those masks as a COCO file for
CVAT and a Label Studio task file (``exports``); how much annotators changed them (``corrections``); and which
frames are worth drawing (``selection``)."""

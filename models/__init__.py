"""A small detection library: FCOS-MO, the Mask R-CNN* baseline and (later) MaskX R-CNN.

Nothing is imported here: ``import models`` stays cheap, and each part is imported from its
module. The layout:

- ``backbone``, ``ops``, ``targets``: the ResNet + FPN, RoI Align, the detectors' target contract;
- ``heads/``: the parts detectors share (FCOS head and targets, RPN, RoI box head, the
  open-vocabulary classifier, mask heads);
- ``meta_arch/``: the detectors that compose them, chosen by name in ``registry``;
- ``engine/``: training data, the resumable stream, distributed set-up, checkpoints, schedule;
- ``evaluation/``: COCO AP and Open Images AP50 on plain data;
- ``train``, ``evaluate``, ``predict``: the command lines.
"""

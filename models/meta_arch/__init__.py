"""The detectors, composed of the shared parts: ``fcos_mo.FCOSMO`` and
``mask_rcnn_star.MaskRCNNStar`` on the contract of ``base.Detector``; built by name through
`models.architectures`."""

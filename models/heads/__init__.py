"""Parts the detectors share: FCOS's dense head and its targets (``fcos``, ``fcos_targets``),
the RPN (``rpn``) and RoI box head (``roi_box``) of the two-stage detectors, the
open-vocabulary classifier (``open_vocab``) and the mask heads with their loss (``mask``)."""

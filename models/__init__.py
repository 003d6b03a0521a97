"""Detectors that learn from ALPs and masks: FCOS-MO, MaskX R-CNN and the Mask R-CNN* baseline."""

import alp_curation.torchvision_fix  # noqa: F401  (must precede any torchvision import)

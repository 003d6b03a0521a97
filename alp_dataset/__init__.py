"""Curated ALPs and COCO masks as data: schemas, readers, torch datasets and the synthetic world."""

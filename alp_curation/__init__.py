"""Pure ALP curation: LocNar records, POS-tag phrases, time alignment, trace boxes, prompt ensembles.

Nothing here imports Beam; the pipelines and the datasets are thin shells around these functions.
"""

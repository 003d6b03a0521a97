"""Pure ALP curation: LocNar records, phrases, time alignment, trace boxes, prompt ensembles.

Nothing here imports Beam; the pipelines and the datasets are thin shells around these functions.
"""

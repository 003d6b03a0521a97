"""Apache Beam pipelines around the pure ``alp_curation`` functions."""

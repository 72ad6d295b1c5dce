"""Differentially private kernel density sketches: build, merge, query, classify, monitor.

``spec`` (what a sketch is), ``rff`` and ``lsh`` (feature maps and their sensitivities),
``projection`` (optional random projection), ``accumulate`` (exact shard sums, merged by
addition), ``release`` (through the privacy gate), ``sketch`` (the released object and merging),
``query`` (KDE estimates, error bounds, exact KDE), ``classify``, ``discriminant`` and ``mmd``
(uses), ``fileformat`` (protobuf files).
"""

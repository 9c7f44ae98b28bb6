"""Single-device model code (``networks``, ``model_io``), one sub-package per training loop
(``gan``, ``encoder``, ``triplet``) and the run machinery they share (``run``)."""

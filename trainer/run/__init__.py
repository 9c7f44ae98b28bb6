"""The run machinery every training loop shares: process group (``distributed``), sharded
checkpoints (``checkpoint``), typed configuration (``config``), run folders and resume
(``start``), logging (``log``), step helpers (``steps``), loss scaling and meters.
Imports models and data, never a training loop."""

"""GAN fine-tuning: configuration, networks and resume (``setup``, ``state``), the ADA
pipeline (``augment``), losses and regularisers (``loss``), and the loop (``loop``)."""

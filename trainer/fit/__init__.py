"""`train` as stages (``stages``): features through the cache (``features``), the L-BFGS head
(``head``), fine-tuning (``fine_tune``) on one machine or a cluster (``cluster``), then the run's
report. May import: ``trainer.data``, ``trainer.model``, ``trainer.report`` (metrics, plots, the
page it writes at the end), ``trainer.config``, ``trainer.run_dir``, ``edge``.
"""

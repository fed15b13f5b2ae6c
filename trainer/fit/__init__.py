"""`train` as stages (``stages``): features through the cache (``features``), the data check
(``checks``), the L-BFGS head (``head``), fine-tuning (``fine_tune``) on one machine or a cluster
(``cluster``; ``signals``: the supervisor process that stops a worker on SIGTERM / SIGINT), then the
report. May import: trainer's atomic, config, data, run_dir, model, export, report; ``edge``.
"""

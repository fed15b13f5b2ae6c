"""What a run shows: metrics, plots, ``evaluate``, the parity gate (``parity``), the model card,
the benchmark table (``bench``) and report.html (``page``). May import: ``trainer.export``
(the mode table), ``trainer.model``, ``trainer.data``, ``trainer.run_dir``, ``edge``.
"""

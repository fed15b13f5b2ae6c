"""model.keras -> verified ``model_<mode>.tflite``: the mode table (``variants``), converter runs
(``tflite``, ``float_convert``), int8 calibration, activation ranges and float layers
(``calibration``, ``ranges``, ``sensitivity``), our metadata writer (``metadata``), ``convert``.
May import: ``trainer.data``, ``trainer.model``, ``trainer.run_dir``, ``edge``.
"""

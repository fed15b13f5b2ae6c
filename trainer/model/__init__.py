"""The Keras network: backbones (shipped MobileNetV2, keras.applications, TF Hub via ``hub``),
weights snapped to int8's grid (``int8_grid``), loading a run's model.keras (``model_io``).
May import: ``trainer.data``, ``trainer.config``, ``trainer.hub_layer``, ``edge``.
"""

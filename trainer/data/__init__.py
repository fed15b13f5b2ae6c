"""Photos on disk: scan a class-per-folder tree and split it (``dataset``), decode in bounded
chunks (``photos``), feature tables on disk (``rows``), the content-keyed feature cache
(``feature_cache``). May import: ``edge``, ``trainer.atomic``. Never TensorFlow at import time.
"""

"""Bundles for a device: ``android`` (android_assets/ and its README template). May import
every stage package below it (data, export, report), ``trainer.run_dir``, ``edge``.
"""

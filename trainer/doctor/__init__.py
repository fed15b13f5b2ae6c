"""`trainer doctor`: the photos that will cost accuracy or trust, found before training.

One backbone pass through the feature cache (a folder already trained on costs none), then on
the cached features: labels that look wrong (``labels``: out-of-fold probabilities of k-fold heads
over several seeds and a neighbour vote), twins within a class, across classes and across folders
(``twins``: sha256, pHash + embedding cosine), photos of no class, and the files the scanner skips
(``examine`` runs it all), written as doctor.json and a self-contained contact sheet, doctor.html
(``page``). Never moves, renames or deletes a photo.

May import: ``trainer.data``, ``trainer.model``, ``trainer.fit`` (features, the checks `train`
runs too), ``trainer.report`` (the contact-sheet figures, report.html's CSS),
``trainer.config``, ``trainer.run_dir``, ``trainer.atomic``, ``edge``. Nothing below it imports
it (only ``trainer.cli``).
"""

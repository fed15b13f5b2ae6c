"""Run edge-transfer's TFLite classifiers on a Pi or kiosk, without TensorFlow.

Modules: runtime (load a model into ai_edge_litert / tflite_runtime), model_file (inspect a
.tflite), verify (check its whole structure before any interpreter sees it), metadata (read
the model's own labels and normalization), flatbuffer (the bounds-checked reader), schema (the
schemas' enums), preprocess (the one photo -> pixels definition, shared with training),
postprocess (scores -> categories), classifier (the whole path), camera, cli.
Importing the package loads nothing heavy; import the module you need.
"""

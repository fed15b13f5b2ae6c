"""edge-transfer trainer: photos -> MobileNetV2 transfer-learned classifier -> TFLite."""

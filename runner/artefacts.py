"""What an export directory holds, named once: export writes these files, the model card describes
them, predict reads them."""

from __future__ import annotations

FORMATS = ("onnx", "pt2")
FILES = {"onnx": "model.onnx", "pt2": "model.pt2"}  # format -> file name
PARITY_FILE = "parity.npz"  # the images and eager logits every format was checked against
CARD_FILE = "model_card.json"
README_FILE = "README.md"
INPUT_NAME, OUTPUT_NAME = "images", "logits"  # the exported graph's input and output

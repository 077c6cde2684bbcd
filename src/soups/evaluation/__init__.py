"""Evaluation as one service: forward passes and accuracy (evaluator), its cache, the pool scorer recipes and analyses use, calibration and significance."""

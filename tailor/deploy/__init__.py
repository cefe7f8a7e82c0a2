"""Deployable models: a trained run exported to one ONNX file (fp32 or int8) that ONNX Runtime serves without
this package's training code."""

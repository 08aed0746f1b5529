"""Export a model file to ONNX (fp32, fp16), int8 ONNX (QDQ) and TensorRT engines.

``onnx``: the whole graph (Preprocess + ResNet-50 + softmax + score) with a
dynamic batch axis, checked by ``onnx.checker`` (full check) and by ONNX
Runtime against torch.  ``quantize``: ONNX Runtime static quantisation to a
QDQ int8 graph calibrated on real cutouts.  ``tensorrt``: serialized engines
built from those ONNX files, cached by GPU, TensorRT/CUDA version, precision,
shapes and model hash.  torch, onnx, onnxruntime and tensorrt are imported
only by the functions that need them.
"""

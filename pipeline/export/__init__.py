"""The end-to-end model and its export: `model` (QualityPredictionModel: the stage-one backbone
and the head in one nn.Module, images -> SSIM) and `formats` (ONNX / TorchScript files of the head
or the whole model, checked against eager PyTorch). May import extract, head and shared
helpers; never train, score, validate, bench or cli.
"""

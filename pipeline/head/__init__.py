"""The head: cached features -> predicted SSIM.

`config` (HeadConfig, torch-free), `mlp` (the torch module, MC dropout, the numpy fold),
`numpy_head` (eval-mode inference without torch), `checkpoint` (one self-describing safetensors
file). May import shared helpers and the label definition; never extract, train, score,
validate, bench or cli.
`config`, `numpy_head` and `checkpoint` load without torch.
"""

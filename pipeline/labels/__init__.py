"""Labels: what the head learns to predict — SSIM after vectorization and the SVG's size.

`definition` computes the label of an image (stage one's decoder, VTracer, resvg, SSIM);
`writer` appends label rows to a CSV. May import `pipeline.images` and shared helpers; never
torch (labelling runs in plain worker processes).
"""

from pipeline.labels.definition import (
    LABEL_DEFINITION,
    Label,
    LabelResult,
    iter_labels,
    label_image,
    label_images,
)
from pipeline.labels.writer import LabelWriter, append_labels

__all__ = ["LABEL_DEFINITION", "Label", "LabelResult", "LabelWriter", "append_labels",
           "iter_labels", "label_image", "label_images"]

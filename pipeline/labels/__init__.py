"""Labels: what the head learns to predict — SSIM after vectorization and the SVG's size.

`definition` computes the label of an image (the shared decoder, VTracer, resvg, SSIM);
`writer` appends label rows to a CSV. May import `pipeline.images` and shared helpers; never
torch (labelling runs in plain worker processes) nor any other stage.
"""

"""Stage one: images -> feature vectors in the store.

`spec` (ExtractConfig, each block's fingerprint spec, the flags that select a namespace),
`weights` and `backbone` (ResNet-50 without its classifier), `imstats` (the torch-free image
statistics block), `preview` (the label's steps on a 128-px copy), `preprocess` (stage one's
decode/resize/normalise), `worker` (one batch: paths -> keys, each block's vectors, failures),
`run` (the run skeleton every extract shares: specs, hash, plan, compute, report), `runner`
(the local reader -> mapper -> writer and `extract()`), `cluster` + `cluster_worker` +
`engines` (Dask/Ray: workers hash and compute, the driver plans and writes). May import
`pipeline.images`, `pipeline.labels` (the label's definition, for `preview`), shared helpers
and `store`; never head, train, score, validate, bench or cli. Importing this package does not
import torch.
"""

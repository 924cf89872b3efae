"""Stage one: images -> feature vectors in the store.

`spec` (ExtractConfig, the fingerprint spec, the flags that select a namespace), `weights` and
`backbone` (ResNet-50 without its classifier), `preprocess` (stage one's decode/resize/normalise),
`worker` (one batch: paths -> keys, vectors, failures), `runner` (the local reader -> mapper ->
writer and `extract()`), `cluster` + `cluster_worker` (Dask/Ray: workers compute, the driver
writes). May import `pipeline.images`, shared helpers and `store`; never head, train, labels,
score, validate, bench or cli. Importing this package does not import torch.
"""

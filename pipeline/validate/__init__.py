"""The architecture validation suite (`ssimcache validate`).

`common` (ValidateConfig, CheckResult), `checks` (dimensions, gradients, stability), `perf`
(memory, latency, profile), `data` (robustness on real images, head comparison), `runner`
(run the suite, build the model from a checkpoint), `report` + `schema.json` (JSON/HTML).
May import extract, head, train, images, shared helpers; never score, bench or cli.
"""

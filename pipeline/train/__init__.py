"""Stage two: fit and measure the head on cached features.

`labels_csv` (read a labels CSV), `features` (vectors for labelled images: read the store,
extract what it lacks), `fit` (TrainConfig, the key-hash split, training, the checkpoint),
`metrics` (MAE, PLCC, SRCC, ...), `evaluate` + `report` (metrics of a checkpoint, JSON/HTML).
May import extract, head, labels, images, shared helpers and store; never score, validate,
bench or cli.
"""

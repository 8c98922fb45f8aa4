"""One router per resource: models, datasets, jobs, predict, the inference protocol, ops."""

"""``scsa-bench``: microbenchmarks of every SCSA provider (see cli.py) and the ResNet-50 end-to-end run."""

"""The sequence-parallel core: torch only, no transformers, trainers or datasets."""

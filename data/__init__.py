"""Datasets: the SynthPedes generator and readers for the public benchmark layouts."""

from .readers import FORMAT_NAMES, Dataset, DatasetError, LayoutError, Record, detect_format, read_dataset

__all__ = ["FORMAT_NAMES", "Dataset", "DatasetError", "LayoutError", "Record", "detect_format", "read_dataset"]

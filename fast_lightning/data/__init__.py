"""Data layer: dataset indexes, the generator/real-test split, IO, foreground, masks, demo data, DataModule.

Imports no model code: synthesizers are injected into the DataModule.
"""

from fast_lightning.data.records import GOOD, ClassIndex, Record, read_class
from fast_lightning.data.split import Split, make_split

__all__ = ["GOOD", "ClassIndex", "Record", "read_class", "Split", "make_split"]

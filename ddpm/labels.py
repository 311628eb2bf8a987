"""Class labels of a conditional run: which dataset label each class index stands for, its name, and its frequency.

A conditional network sees class indices 0..K-1 (and K, the null label). The dataset's labels are text (flowers:
the Oxford class numbers 1..102 of labels.csv; pets: breed names). A run fixes the mapping once, from its training
data, and stores it in its checkpoint (and as labels.json beside it), so that sampling needs no data:

    classes = Classes.from_data(data, num_classes=102)   # at training time
    classes.index("sunflower"), classes.index("54")      # --label: a name or a dataset label, any case
    classes.draw(512, seed=0)                            # labels drawn with the training data's frequencies
"""
from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ddpm.data import DATA_DIR, DatasetError

# The common names of datasets whose labels are numbers, shipped beside their archive.
NAMES_FILES = {"flowers102": "flowers102/names.csv", "torchvision:flowers102": "flowers102/names.csv"}
LABELS_JSON = "labels.json"


def label_names(dataset: str) -> dict[str, str]:
    """{dataset label: common name} of a dataset with a names file (flowers: "54" -> "sunflower"), else {}."""
    if dataset not in NAMES_FILES:
        return {}
    with open(DATA_DIR / NAMES_FILES[dataset], newline="", encoding="utf-8") as f:
        return {row["label"]: row["name"] for row in csv.DictReader(f)}


def _sort_key(label: str):
    """Numbers in numeric order (flowers 1..102), before any other labels in alphabetical order."""
    return (0, int(label), "") if label.isdigit() else (1, 0, label.lower())


@dataclass(frozen=True)
class Classes:
    labels: tuple[str, ...]  # the dataset label of class index i
    names: tuple[str, ...]  # its common name (the label itself where the dataset has no names file)
    counts: tuple[int, ...]  # its number of training images: the frequencies that unlabelled sampling draws from

    @classmethod
    def from_data(cls, data, num_classes: int) -> "Classes":
        """The classes of `data` (a ddpm.data.ImageData) for a network of `num_classes` classes; a dataset with
        unlabelled images, or more labels than num_classes, is refused in one line naming it."""
        unlabelled = sum(1 for label in data.labels if not label)
        if unlabelled:
            raise DatasetError(
                f"dataset {data.name!r} has {unlabelled} of {len(data)} images without a label, and a conditional run "
                f"(num_classes={num_classes}) needs every image labelled: label them in labels.csv or set num_classes=0"
            )
        counts = Counter(data.labels)
        if len(counts) > num_classes:
            raise DatasetError(
                f"dataset {data.name!r} has {len(counts)} labels, more than num_classes={num_classes}: "
                f"set num_classes to at least {len(counts)}"
            )
        labels = tuple(sorted(counts, key=_sort_key))
        names = label_names(data.name)
        return cls(labels, tuple(names.get(label, label) for label in labels), tuple(counts[lab] for lab in labels))

    def indices(self, labels: list[str]) -> torch.Tensor:
        """Class indices (long) of a list of dataset labels."""
        position = {label: i for i, label in enumerate(self.labels)}
        return torch.tensor([position[label] for label in labels], dtype=torch.long)

    def index(self, text: str, *, where: str = "this run") -> int:
        """The class of `text`: a common name or a dataset label, matched exactly but ignoring case."""
        wanted = text.strip().lower()
        for i, (label, name) in enumerate(zip(self.labels, self.names)):
            if wanted in (label.lower(), name.lower()):
                return i
        examples = ", ".join(repr(name) for name in self.names[:3])
        raise ValueError(f"--label {text!r}: no such label in {where}; its {len(self)} labels (e.g. {examples}) "
                         f"are listed in {where}/{LABELS_JSON}")

    def draw(self, num: int, *, seed: int = 0) -> torch.Tensor:
        """`num` class indices drawn with the training data's label frequencies (so that a conditional model's FID
        compares with an unconditional one's)."""
        weights = torch.tensor(self.counts, dtype=torch.float64)
        return torch.multinomial(weights, num, replacement=True, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.labels)

    def to_list(self) -> list[dict]:
        return [{"index": i, "label": label, "name": name, "images": count}
                for i, (label, name, count) in enumerate(zip(self.labels, self.names, self.counts))]

    @classmethod
    def from_list(cls, rows: list[dict]) -> "Classes":
        rows = sorted(rows, key=lambda row: row["index"])
        return cls(tuple(r["label"] for r in rows), tuple(r["name"] for r in rows), tuple(r["images"] for r in rows))


def classes_path(run_dir: Path) -> Path:
    return Path(run_dir) / LABELS_JSON

"""Named network inputs and the held-out splits made from them, always by source photo.

Every fidelity figure in the report says which photos it comes from, and no figure is
computed on a photo that chose anything (calibration ranges or fallback layers). Crops of
one photo are one source: they go to one side of a split together. Files of a user's folder
are each their own source (nothing tells which files were cut from one photo; keep crops of
one photo out of ``--eval`` when calibrating on the others).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PhotoSet:
    """Network inputs (each at its own shape), their names and the photo each came from."""

    inputs: list[np.ndarray]
    names: list[str]
    sources: list[str]

    def __len__(self) -> int:
        return len(self.inputs)

    def select(self, sources: set[str]) -> "PhotoSet":
        """The inputs cut from the given source photos, in order."""
        keep = [i for i, s in enumerate(self.sources) if s in sources]
        return PhotoSet([self.inputs[i] for i in keep], [self.names[i] for i in keep], [self.sources[i] for i in keep])

    def split_by_source(self) -> tuple["PhotoSet", "PhotoSet"]:
        """(search, report): source photos sorted by name, alternately to each side, so the
        split is deterministic and no source photo is on both sides. Needs two sources."""
        ordered = sorted(set(self.sources))
        if len(ordered) < 2:
            raise ValueError("splitting needs photos from at least two source photos")
        return self.select(set(ordered[0::2])), self.select(set(ordered[1::2]))


def empty() -> PhotoSet:
    return PhotoSet([], [], [])

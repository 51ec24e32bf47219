"""Constants of HPE Dragon's ``dragon.infrastructure.facts`` that user
programs import. MPI launch through PMI is not supported by this runtime:
``PMIBackend`` exists so that programs import, and a ``ProcessGroup`` asked
for PMI raises ``NotImplementedError``."""
from __future__ import annotations

import enum

__all__ = ["PMIBackend"]


class PMIBackend(enum.Enum):
    CRAY = "cray"
    PMIX = "pmix"

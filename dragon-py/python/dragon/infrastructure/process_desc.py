"""HPE Dragon's ``dragon.infrastructure.process_desc``: ``ProcessOptions``
(accepted by :class:`dragon.native.process.Process`; its options concern
HPE's infrastructure channels and have no effect here)."""
from __future__ import annotations

import dataclasses

__all__ = ["ProcessOptions"]


@dataclasses.dataclass
class ProcessOptions:
    make_inf_channels: bool = False
    mode: int = 0
    argdata: bytes | None = None

    def get_sdict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_sdict(cls, sdict: dict) -> "ProcessOptions":
        return cls(**sdict)

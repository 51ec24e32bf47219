"""The private extension module (Rust). Not a public API."""

__version__: str

def new_run_id() -> str:
    """A new run id owned by the calling process: ``<pid>-<starttime>-<8 hex>``."""

def valid_run_id(run_id: str) -> bool:
    """Whether ``run_id`` is a well-formed run id."""

def run_prefix(run_id: str) -> str:
    """File-name prefix of every shared-memory segment of ``run_id``."""

def cleanup_run(run_id: str) -> int:
    """Remove every shared-memory segment of ``run_id``; returns how many."""

def cleanup_dead_runs() -> int:
    """Remove the segments of every run whose owning process is dead."""

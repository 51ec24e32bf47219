//! Loom models of the synchronisation objects.

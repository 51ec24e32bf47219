"""Entry point of a node service: ``python -m dragon._node``.

The launcher (``dragon --hostlist ...``) starts this on every node of a
multi-node run, over ssh (or the ``--remote-exec`` command, or as a plain
child on its own node), and writes the run's bootstrap (secret included)
on its standard input. Everything else is the ``runtime`` crate's node
service, in Rust: see ``runtime/src/service.rs``.
"""
import os
import sys


def main() -> None:
    from dragon import _native

    code = _native.node_service(sys.executable)
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()

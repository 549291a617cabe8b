"""``python -m evalledger`` is the same as the ``evalledger`` command."""

from .main import cli

if __name__ == "__main__":
    cli()

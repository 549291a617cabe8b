"""``python -m evalledger`` is the same as the ``evalledger`` command."""

from evalledger.cli import main

if __name__ == "__main__":
    main()

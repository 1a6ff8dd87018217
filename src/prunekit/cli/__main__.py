"""`python -m prunekit.cli`, the same as `prunekit`."""

from prunekit.cli import main

main()

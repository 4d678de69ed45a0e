"""`python -m stave`: the same command line as the `stave` console script."""

from stave.cli import main

main()

"""``python -m nbutils.data {fetch,verify,where}``: the MNIST cache from the command line."""

import sys

from nbutils.data.mnist import main

if __name__ == "__main__":
    sys.exit(main())

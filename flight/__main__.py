import sys

from flight.app import main

sys.exit(main())

import sys

from iotdefender.cli import main

sys.exit(main())

from iotdefender.cli import main
import sys
sys.exit(main())

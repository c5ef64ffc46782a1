"""`python -m oih_gateway render|check|docs|validate`: see `oih_gateway.cli`."""

import sys

from oih_gateway.cli import main

sys.exit(main())

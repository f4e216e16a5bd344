"""``python -m vgg``: the command-line interface."""

from vgg.cli import main

raise SystemExit(main())

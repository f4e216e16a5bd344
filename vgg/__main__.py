"""``python -m vgg``: the command-line interface."""

from vgg.speedups.allocator import tune_allocator

tune_allocator()  # before torch allocates (vgg/speedups/allocator.py)

from vgg.cli import main  # noqa: E402

raise SystemExit(main())

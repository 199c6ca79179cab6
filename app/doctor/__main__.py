"""``python -m app.doctor <url>``: see app/doctor/cli.py."""

from .cli import main

raise SystemExit(main())

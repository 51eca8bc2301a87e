"""Entry point of the frozen desktop app (PyInstaller starts here)."""

from app.cli import main

raise SystemExit(main())

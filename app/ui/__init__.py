"""PySide6 user interface. Widgets paint and react; workers do the rest."""
